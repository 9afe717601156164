"""A data loader over in-memory tensors, for datasets of cached features.

Avalanche's per-sample dataset path costs about 2.4x a plain loop over tensors (measured on
50k x 512 features, batch 256, 2 CPU cores). This loader reads the adapted Avalanche dataset
once per experience into column tensors (on the training device) and then yields batches by
index gathering, so the strategy, its plugins and its evaluators stay Avalanche's own while the
epochs run at tensor speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def materialize(dataset: Dataset, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """All of `dataset` as one tensor per batch column (x, y, target, ..., task)."""
    columns: list[list[torch.Tensor]] | None = None
    for batch in DataLoader(dataset, batch_size=4096, shuffle=False):
        if columns is None:
            columns = [[] for _ in batch]
        for column, part in zip(columns, batch, strict=True):
            column.append(part)
    if columns is None:
        raise ValueError("cannot build a loader over an empty dataset")
    return [torch.cat(column).to(device) for column in columns]


class InMemoryBatchLoader:
    """Yields `[x, y, target, ..., task]` batches gathered from tensors; reshuffled each epoch."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        self.columns = materialize(dataset, device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    @property
    def num_samples(self) -> int:
        return len(self.columns[0])

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        n = self.num_samples
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.columns[0].device)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield [column[index] for column in self.columns]
