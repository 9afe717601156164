"""An on-disk cache for expensive, deterministic tensors (teacher outputs, embeddings, weights).

Entries are keyed by a content hash of everything that produced them (weights, data,
preprocessing, config), so a changed input can never return an old result: it gets a new key.
Files are written atomically and loaded memory-mapped, so large caches are not read whole.
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

from csl_avalanche.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


class CacheError(ConfigError):
    """A cache file that cannot be read or does not hold what its name promises."""


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
    reused the cache.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key[:20]}.pt"

    def get_or_compute(self, name: str, key: str, compute: Callable[[], T]) -> T:
        path = self.path(name, key)
        if path.exists():
            self.hits += 1
            log.info("cache hit: %s", path)
            return self._load(path, key)
        self.misses += 1
        value = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": key, "value": value}, tmp)
        os.replace(tmp, path)
        log.info("cache write: %s", path)
        return value

    @staticmethod
    def _load(path: Path, key: str) -> Any:
        try:
            payload = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as err:  # a truncated or foreign file
            raise CacheError(
                f"cache file {path} is unreadable ({type(err).__name__}: {err}); "
                "delete it and run again to recompute it"
            ) from None
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise CacheError(
                f"cache file {path} is stale: it was written for different inputs; "
                "delete it and run again to recompute it"
            )
        return payload["value"]
