"""Value checks of data tensors: finite numbers, probability vectors, logits (not probabilities).

Each check returns a one-line description of the first fault it finds ("teacher_train_probs
holds NaN at teacher 1, sample 5, class 0"), or None; callers wrap it in the error of their
context (a features file, a cache file, a freshly computed tensor). Tensors may be memory-mapped
files of tens of GB: a check reads them once, a chunk of rows at a time, and never builds a
temporary as large as the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 22  # 16 MB of float32 per chunk
PROBABILITY_TOLERANCE = 1e-3  # how far a row sum may be from 1
SAMPLE_AXES = ("sample", "feature")
TEACHER_AXES = ("teacher", "sample", "class")


def finite_fault(name: str, tensor: torch.Tensor, axes: Sequence[str] = ()) -> str | None:
    """Where `tensor` first holds NaN or +-Inf; `axes` names its dimensions in the message."""
    if not tensor.is_floating_point():
        return None
    for offset, chunk in _chunks(tensor.reshape(1) if tensor.dim() == 0 else tensor):
        if fault := _nonfinite(name, chunk, offset, axes):
            return fault
    return None


def logits_fault(name: str, logits: torch.Tensor) -> str | None:
    """Where teacher logits [T, N, C] first hold NaN or +-Inf; or, when every row is a
    probability vector (as `probability_fault` accepts it, C > 1), that they are probabilities:
    their softmax would flatten them. One reading, a chunk at a time."""
    tolerance = _tolerance(logits.dtype)
    probabilities = logits.shape[-1] > 1
    for offset, chunk in _chunks(logits):
        if fault := _nonfinite(name, chunk, offset, TEACHER_AXES):
            return fault
        probabilities = probabilities and not _improper_rows(chunk, tolerance)[0].any()
    if probabilities and logits.numel():
        return (
            f"{name} holds probabilities, not logits: every row is in [0, 1] and sums to 1, "
            "and a softmax of them would flatten them"
        )
    return None


def probability_fault(name: str, probs: torch.Tensor) -> str | None:
    """The first row of `probs` [T, N, C] that is not a probability vector, and why: a
    non-finite entry, a negative entry, or a sum away from 1 (in this order within a row).

    Sums may miss 1 by PROBABILITY_TOLERANCE, or by the rounding of `probs`' dtype where that is
    coarser (bfloat16 rounds each entry by up to 0.4%)."""
    tolerance = _tolerance(probs.dtype)
    for offset, chunk in _chunks(probs):
        bad_rows, sums = _improper_rows(chunk, tolerance)
        if not bad_rows.any():
            continue
        local, row = _first(bad_rows, offset)
        values, where = chunk[local], _where(row, TEACHER_AXES)
        if not torch.isfinite(values).all():
            cls = int((~torch.isfinite(values)).byte().argmax())
            return f"{name} holds {_number(values[cls])} at {where}, class {cls}"
        if (values < 0).any():
            negative = float(values[int((values < 0).byte().argmax())])
            return f"{name}: {where} has a negative probability {negative:.4f}"
        return f"{name}: {where} sums to {float(sums[local]):.4f}"
    return None


def nested_finite_fault(name: str, value: Any) -> str | None:
    """`finite_fault` of every tensor in nested dicts and lists (e.g. a list of state dicts),
    each named by its path: `teachers[1]['weight']`."""
    if isinstance(value, torch.Tensor):
        return finite_fault(name, value)
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items = enumerate(value)
    else:
        return None
    faults = (nested_finite_fault(f"{name}[{key!r}]", item) for key, item in items)
    return next((fault for fault in faults if fault), None)


def embeddings_fault(value: Mapping[str, torch.Tensor]) -> str | None:
    """Faults of computed {"pool": [N, D], "test": [M, D]} embeddings, named as the FeatureSet
    fields they become."""
    return finite_fault("train_x", value["pool"], SAMPLE_AXES) or finite_fault(
        "test_x", value["test"], SAMPLE_AXES
    )


def teacher_probs_fault(value: Mapping[str, torch.Tensor]) -> str | None:
    """Faults of computed {"pool": [T, N, C], "test": [T, M, C]} teacher probabilities, named as
    the FeatureSet fields they become."""
    return probability_fault("teacher_train_probs", value["pool"]) or probability_fault(
        "teacher_test_probs", value["test"]
    )


def _tolerance(dtype: torch.dtype) -> float:
    """How far a row sum may miss 1: PROBABILITY_TOLERANCE, or the rounding of `dtype`."""
    return max(PROBABILITY_TOLERANCE, torch.finfo(dtype).eps)


def _improper_rows(chunk: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(which rows of `chunk` [..., C] are not probability vectors, every row's sum)."""
    sums = chunk.sum(dim=-1, dtype=torch.promote_types(chunk.dtype, torch.float32))
    bad_rows = (
        ~torch.isfinite(chunk).all(dim=-1)
        | (chunk < 0).any(dim=-1)
        | ((sums - 1).abs() > tolerance)
    )
    return bad_rows, sums


def _nonfinite(
    name: str, chunk: torch.Tensor, offset: tuple[int, ...], axes: Sequence[str]
) -> str | None:
    """Where the chunk that starts at `offset` first holds NaN or +-Inf."""
    bad = ~torch.isfinite(chunk)
    if not bad.any():
        return None
    local, index = _first(bad, offset)
    return f"{name} holds {_number(chunk[local])} at {_where(index, axes)}"


def _chunks(
    tensor: torch.Tensor, prefix: tuple[int, ...] = ()
) -> Iterator[tuple[tuple[int, ...], torch.Tensor]]:
    """(index of the chunk's first element, chunk): slices of about CHUNK_ELEMENTS elements
    along dimension 0, or, where one slice is larger, the chunks of each slice in turn."""
    per_row = math.prod(tensor.shape[1:])
    if per_row > CHUNK_ELEMENTS and tensor.dim() > 2:
        for i in range(len(tensor)):
            yield from _chunks(tensor[i], (*prefix, i))
        return
    rows = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    for start in range(0, len(tensor), rows):
        yield (*prefix, start), tensor[start : start + rows]


def _first(mask: torch.Tensor, offset: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The first True of the chunk `mask` that starts at `offset`: (index in the chunk, index
    in the whole tensor)."""
    flat = int(mask.flatten().byte().argmax())
    local = tuple(int(i) for i in np.unravel_index(flat, tuple(mask.shape)))
    return local, (*offset[:-1], offset[-1] + local[0], *local[1:])


def _where(index: tuple[int, ...], axes: Sequence[str]) -> str:
    if len(axes) >= len(index):
        return ", ".join(f"{axis} {i}" for axis, i in zip(axes, index, strict=False))
    return f"index {list(index)}"


def _number(value: torch.Tensor) -> str:
    value = float(value)
    return "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")
