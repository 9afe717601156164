"""An on-disk cache for expensive, deterministic tensors (teacher outputs, embeddings, weights).

Entries are keyed by a content hash of everything that produced them (weights, data,
preprocessing, config), so a changed input can never return an old result: it gets a new key.
Files are written atomically and loaded memory-mapped, so large caches are not read whole;
values larger than memory (teacher outputs) are written in place, part by part (`get_or_fill`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from csl_avalanche.core.errors import ConfigError, reason
from csl_avalanche.storage.atomic import (
    Blank,
    remove_stale_temporaries,
    save_in_place,
    write_atomically,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class CacheError(ConfigError):
    """A cache folder that cannot be written, or a cache file that cannot be read or does not
    hold what its name promises."""


class InvalidValueError(ConfigError):
    """A freshly computed tensor with a fault (NaN, a negative probability ...): a diverged
    model or broken inputs. It is not cached."""


def fingerprint(*parts: Any) -> str:
    """SHA-256 over tensors, arrays, modules' weights, and JSON-able values, in order."""
    digest = hashlib.sha256()
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


def _feed(digest: Any, part: Any) -> None:
    if isinstance(part, torch.nn.Module):
        part = part.state_dict()
    if isinstance(part, torch.Tensor):
        tensor = part.detach().cpu().contiguous()
        digest.update(f"tensor{tuple(tensor.shape)}{tensor.dtype}".encode())
        raw = tensor.reshape(-1).view(torch.uint8)  # reshape: 0-d tensors cannot be viewed
        digest.update(raw.numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(part, np.ndarray):
        _feed(digest, torch.from_numpy(np.ascontiguousarray(part)))
    elif isinstance(part, Mapping):
        digest.update(b"{")
        for key in sorted(part, key=str):
            digest.update(str(key).encode())
            _feed(digest, part[key])
        digest.update(b"}")
    elif isinstance(part, Sequence) and not isinstance(part, str | bytes):
        digest.update(b"[")
        for item in part:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())


class TensorCache:
    """`get_or_compute(name, key, compute)` returns the stored value or computes and stores it.

    `hits` and `misses` count what happened, so callers and tests can see that a second run
    reused the cache. Opening a cache removes the temporary files of runs that were killed
    while writing; the first miss checks, before anything is computed, that the folder can be
    written.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0
        self._writable = False
        remove_stale_temporaries(self.root)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key[:20]}.pt"

    def get_or_compute(
        self,
        name: str,
        key: str,
        compute: Callable[[], T],
        *,
        check: Callable[[T], str | None] | None = None,
        cause: str = "",
    ) -> T:
        """`check` returns a fault of a value (or None). A stored value with a fault is a
        CacheError naming its file; a computed one is an InvalidValueError that adds `cause`
        (what likely went wrong, and the fix), and is not stored."""
        path = self.path(name, key)
        if path.exists():
            return self._hit(path, key, check)
        self.misses += 1
        self._require_writable()
        value = compute()
        if check is not None and (fault := check(value)):
            raise _invalid(name, fault, cause)
        self._write(path, {"key": key, "value": value})
        log.info("cache write: %s", path)
        return value

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
        """`get_or_compute` for a dict of tensors too large for memory: on a miss the entry's
        file is laid out with the tensors `blanks` describes, and `fill(tensors)` writes them
        in place, memory-mapped, a part at a time. The value is then checked as it lies in the
        file (a fault leaves no entry) and returned memory-mapped, like a hit."""
        path = self.path(name, key)
        if path.exists():
            return self._hit(path, key, check)
        self.misses += 1
        self._require_writable()

        def fill_and_check(payload: dict) -> None:
            fill(payload["value"])
            if check is not None and (fault := check(payload["value"])):
                raise _invalid(name, fault, cause)

        try:
            save_in_place(path, {"key": key, "value": dict(blanks)}, fill_and_check)
        except OSError as err:
            raise self._write_error(err) from None
        log.info("cache write: %s", path)
        return self._load(path, key)

    def _hit(self, path: Path, key: str, check: Callable[[Any], str | None] | None) -> Any:
        self.hits += 1
        log.info("cache hit: %s", path)
        value = self._load(path, key)
        if check is not None and (fault := check(value)):
            raise CacheError(
                f"cache file {path} holds bad values: {fault}; delete it and run again "
                "to recompute it"
            )
        return value

    def _require_writable(self) -> None:
        """A probe write, once: a folder that cannot be written fails before any work."""
        if self._writable:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            why = "a file of that name exists" if self.root.is_file() else reason(err)
            raise CacheError(
                f"cannot create the cache folder {self.root} ({why}); set cache_dir= to a "
                "writable folder"
            ) from None
        probe = self.root / "write-probe.pt"
        self._write(probe, {"key": "probe", "value": torch.zeros(1)})
        probe.unlink(missing_ok=True)  # another run may have probed at the same time
        self._writable = True

    def _write(self, path: Path, payload: dict) -> None:
        try:
            write_atomically(path, lambda file: torch.save(payload, file))
        except (OSError, RuntimeError) as err:  # torch.save reports write errors as either
            raise self._write_error(err) from None

    def _write_error(self, err: Exception) -> CacheError:
        return CacheError(
            f"cannot write to the cache folder {self.root} ({reason(err)}); set "
            "cache_dir= to a writable folder with free space, or free space on its disk"
        )

    @staticmethod
    def _load(path: Path, key: str) -> Any:
        try:
            payload = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as err:  # a truncated or foreign file
            raise CacheError(
                f"cache file {path} is unreadable ({reason(err)}); "
                "delete it and run again to recompute it"
            ) from None
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise CacheError(
                f"cache file {path} is stale: it was written for different inputs; "
                "delete it and run again to recompute it"
            )
        return payload["value"]


def _invalid(name: str, fault: str, cause: str) -> InvalidValueError:
    hint = f" {cause}" if cause else ""
    return InvalidValueError(f"computed {name}: {fault}.{hint} Nothing was cached.")
