"""The content-hashed cache shared by the processes of a torchrun run.

Rank 0 alone decides whether an entry exists, computes what cannot be split, checks and writes
every entry; the other ranks wait, then load the entry (memory-mapped) from the same folder. A
`Sharded` computation (feature extraction, teacher outputs) is split by rows instead: each rank
computes its block, ranks other than 0 leave theirs in a temporary file of the cache folder,
and rank 0 joins the blocks in rank order into the one entry it writes. An entry filled in
place (`get_or_fill`, teacher outputs larger than memory) is filled by rank 0 alone. With one
process, SharedTensorCache is TensorCache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from csl_avalanche.distributed import (
    all_ranks,
    broadcast_object,
    is_main,
    main_only,
    rank,
    shard_rows,
    world_size,
)
from csl_avalanche.storage.atomic import Blank, temporary
from csl_avalanche.storage.cache import TensorCache

T = TypeVar("T")
Rows = Callable[[int], slice]  # the number of samples -> this rank's block of them


@dataclass(frozen=True)
class Sharded(Generic[T]):
    """A computation that splits by samples. `part(rows)` computes the value on the block
    `rows(n)` of each of its sample axes (of n samples); the parts join by concatenation along
    `dim` (of each tensor, in dicts too). `size`: the fewest samples of any axis; with fewer
    samples than ranks, rank 0 computes the whole. Called without a split, it is the whole."""

    part: Callable[[Rows], T]
    dim: int
    size: int

    def __call__(self) -> T:
        return self.part(lambda n: slice(0, n))


class SharedTensorCache(TensorCache):
    """TensorCache for torchrun's processes: rank 0 writes, the others read (module doc)."""

    def get_or_compute(
        self,
        name: str,
        key: str,
        compute: Callable[[], T],
        *,
        check: Callable[[T], str | None] | None = None,
        cause: str = "",
    ) -> T:
        base = super().get_or_compute
        if world_size() == 1:
            return base(name, key, compute, check=check, cause=cause)
        present = self._present(name, key)
        if not present and isinstance(compute, Sharded) and compute.size >= world_size():
            main_only(self._require_writable)  # before any work, as TensorCache does
            compute = self._split(name, key, compute)
        return self._by_main(
            name, key, present, lambda: base(name, key, compute, check=check, cause=cause)
        )

    def get_or_fill(
        self,
        name: str,
        key: str,
        blanks: Mapping[str, Blank],
        fill: Callable[[dict[str, torch.Tensor]], None],
        *,
        check: Callable[[dict[str, torch.Tensor]], str | None] | None = None,
        cause: str = "",
    ) -> dict[str, torch.Tensor]:
        base = super().get_or_fill
        if world_size() == 1:
            return base(name, key, blanks, fill, check=check, cause=cause)
        return self._by_main(
            name,
            key,
            self._present(name, key),
            lambda: base(name, key, blanks, fill, check=check, cause=cause),
        )

    def _present(self, name: str, key: str) -> bool:
        """Whether the entry exists, as rank 0 sees it (every rank gets the same answer)."""
        return broadcast_object(self.path(name, key).exists() if is_main() else None)

    def _by_main(self, name: str, key: str, present: bool, get: Callable[[], T]) -> T:
        """Rank 0 gets the entry (`get`: a hit, or a miss it computes, checks and writes);
        the others wait, count it as rank 0 did, then load what it wrote."""
        value = main_only(get)
        if is_main():
            return value
        if present:
            self.hits += 1
        else:
            self.misses += 1
        return self._load(self.path(name, key), key)

    def _split(self, name: str, key: str, sharded: Sharded[T]) -> Callable[[], T]:
        """Every rank computes its block now; returns what rank 0 then calls to join them."""
        own: list[T] = []

        def block() -> Path | None:
            value = sharded.part(lambda n: shard_rows(n, rank(), world_size()))
            if is_main():
                own.append(value)
                return None
            # A temporary name: removed like any temporary file if this run is killed.
            file = temporary(self.path(name, key).with_suffix(f".part{rank()}"))
            self._write(file, {"key": key, "value": value})
            return file

        files = all_ranks(block)

        def joined() -> T:
            parts = [*own, *(self._load(file, key) for file in files[1:])]
            try:
                return _concatenate(parts, sharded.dim)
            finally:
                for file in files[1:]:
                    file.unlink(missing_ok=True)

        return joined


def _concatenate(parts: list[Any], dim: int) -> Any:
    """Tensors, or dicts of them, joined along `dim` in order."""
    if isinstance(parts[0], dict):
        return {k: _concatenate([part[k] for part in parts], dim) for k in parts[0]}
    return torch.cat(parts, dim=dim)
