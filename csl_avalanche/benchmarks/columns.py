"""The tensors a dataset built here is gathered from.

Every dataset this package builds (`streams.labelled_dataset`) carries its `Columns` under the
attribute `COLUMNS`, so that a loader can gather batches by index from the tensors themselves
(`training.loader`) instead of Avalanche's per-sample path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COLUMNS = "csl_columns"  # the attribute of a dataset that holds its Columns
TRANSFER_ROWS = 65536  # rows gathered and moved to the device at a time


@dataclass(frozen=True)
class Columns:
    """The tensors a dataset's samples come from: sample i is `[t[rows[i]] for t in tensors]`
    (`rows` None: sample i is row i), the batch columns x, y, (soft target, ...) and task."""

    tensors: tuple[torch.Tensor, ...]
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.tensors[0]) if self.rows is None else len(self.rows)

    def batch(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The samples `index` of the dataset, one tensor per column."""
        source = index if self.rows is None else self.rows[index]
        return [tensor[source] for tensor in self.tensors]

    def to(self, device: torch.device | str) -> Columns:
        """The dataset's rows only, as new tensors on `device`, moved TRANSFER_ROWS at a time."""
        n = len(self)
        moved = [torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=device) for t in self.tensors]
        for start in range(0, n, TRANSFER_ROWS):
            index = torch.arange(start, min(start + TRANSFER_ROWS, n))
            for out, part in zip(moved, self.batch(index), strict=True):
                out[start : start + len(index)] = part.to(device)
        return Columns(tuple(moved))
