"""The E-step over a pool too large for memory: chunks of rows, one at a time on the device.

A level's teacher outputs are [K, N, C] (12.8 GB of float16 for 800k samples, 8 teachers and
1000 classes), and so are the student's logits [N, C] once more: neither is ever built whole.
`level_results` reads a chunk of rows of the level's teachers from the memory-mapped features
(`FeatureSet.teacher_probs`), computes the student's logits on the same rows, moves both to the
device, and keeps only the per-sample results (`cosupervision.SampleResults`: assignment, label,
loss, top-K flag; the target row for soft labels, in float16) on the CPU. The selection, whose
count M is global, runs afterwards over all the rows' results (`cosupervision.select_kept`).

Data-parallel use: each process calls `level_results` on its own range of positions (whole
evaluation batches of the student), and every process receives the others' rows before
`select_kept` (the plugin, `csl_avalanche.training.plugins.cosupervision`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import torch

from csl_avalanche.core import cosupervision as cs

# How much memory the float32 tensors of one chunk may take (device memory on a GPU).
CHUNK_MEMORY = 256 * 2**20
# Soft targets kept per sample, [N, C]: half of float32. Measured on the default digits run
# and on Fashion-MNIST (seed 0) with soft labels: the same accuracies as float32 targets.
SOFT_TARGET_DTYPE = torch.float16

# Rows of the pool (a slice, or an index tensor) -> the student's logits on them.
Student = Callable[[slice | torch.Tensor], torch.Tensor]


class TeacherOutputs(Protocol):
    """What the E-step reads of a benchmark (`benchmarks.features.FeatureSet` is one): the
    pool's labels (for their count) and its teachers' probabilities, a chunk of rows at a time."""

    train_y: torch.Tensor

    def teacher_probs(
        self,
        split: str,
        teachers: slice | Sequence[int],
        rows: slice | torch.Tensor,
        device: torch.device | str | None = None,
    ) -> torch.Tensor: ...


def chunk_rows(
    num_teachers: int, num_classes: int, memory: int = CHUNK_MEMORY, batch_size: int = 1
) -> int:
    """Rows per chunk so that one chunk's tensors fit in `memory` bytes: per row, the K teacher
    rows (stored and float32, and their logarithms for `kl`) and a few [C] rows of the student
    (logits, their softmax, the target).

    When fewer rows than one of the student's evaluation batches (`batch_size`) fit, the
    student still runs on whole batches (`level_results`): one batch's logits, [batch_size, C]
    float32, stay on the device while its rows' teacher outputs are read in chunks, which get
    the memory left. (A batch whose logits alone exceed `memory` gets chunks of one row: the
    evaluation of the test split holds such a batch too.)"""
    per_row = 4 * num_classes * (3 * num_teachers + 5)
    rows = memory // per_row
    if rows < batch_size:
        rows = (memory - 4 * batch_size * num_classes) // per_row
    return max(1, rows)


def aligned(chunk_size: int, batch_size: int) -> int:
    """`chunk_size` rounded down to a multiple of `batch_size` (at least one batch): the rows
    the student is run on at once, so that it sees the batches of one pass over the whole pool
    and its logits (and everything after them) are bit for bit the same."""
    return max(batch_size, chunk_size // batch_size * batch_size)


def level_results(
    features: TeacherOutputs,
    teachers: slice | Sequence[int],
    student: Student | None,
    *,
    rule: str,
    labels: str,
    criterion: str,
    class_to_teacher: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    samples: torch.Tensor | None = None,
    positions: range | None = None,
    chunk_size: int,
    batch_size: int = 1,
    whole: bool = False,
    device: torch.device | str = "cpu",
) -> cs.SampleResults:
    """`cosupervision.sample_results` over the pool rows `samples` (None: the whole pool),
    `chunk_size` rows at a time, gathered on the CPU, soft targets rounded to SOFT_TARGET_DTYPE.

    teachers: the experience's teacher indices; student: the previous student's logits on
    some pool rows (a slice or an index tensor; None where the student does not route);
    targets [N]: the pool's true units, for the `oracle` rule only. `positions`: only these
    positions of `samples` (one process's share; default: all). The result is bit-identical
    to `sample_results` over all the rows at once (the soft targets to their rounding).

    batch_size: the student's evaluation batch. The student is run on `aligned(chunk_size,
    batch_size)` positions at a time from `positions.start` (a multiple of `batch_size`, so
    that it gets the batches of one pass over all positions whatever the chunk size and the
    share), and the teachers' outputs are read `chunk_size` rows at a time within those.
    `whole`: results for all the positions of `samples`, only `positions` written (the rest
    uninitialised), for a data-parallel E-step to receive the other processes' rows into.
    """
    total = len(features.train_y) if samples is None else len(samples)
    positions = range(total) if positions is None else positions
    owner = None if class_to_teacher is None else class_to_teacher.to(device)
    # Filled chunk by chunk: one allocation, where a list of small parts kept between the
    # chunks' large temporaries would fragment the heap (a larger peak, measured with glibc).
    results: cs.SampleResults | None = None
    offset = 0 if whole else positions.start
    for first, last in _spans(positions, aligned(chunk_size, batch_size)):
        logits = None if student is None or first == last else student(_rows(samples, first, last))
        for start, stop in _spans(range(first, last), chunk_size):
            rows = _rows(samples, start, stop)
            probs = features.teacher_probs("train", teachers, rows, device).permute(1, 0, 2)
            if student is not None and logits is None:  # no rows: no student to run
                logits = probs.new_empty((0, probs.shape[2]))
            part = cs.sample_results(
                None if logits is None else logits[start - first : stop - first],
                probs,
                rule,
                labels,
                criterion,
                class_to_teacher=owner,
                targets=None if targets is None else targets[rows].to(device),
            ).to("cpu")
            part = replace(
                part, soft=None if part.soft is None else part.soft.to(SOFT_TARGET_DTYPE)
            )
            results = results or part.empty(total if whole else len(positions))
            results.write(start - offset, part)
    return results


def _spans(positions: range, size: int) -> list[tuple[int, int]]:
    """`positions` cut into consecutive (start, stop) spans of `size`; an empty range is one
    empty span (whose results still have the kinds and widths of any other's)."""
    starts = range(positions.start, positions.stop, size) or [positions.start]
    return [(start, min(start + size, positions.stop)) for start in starts]


def _rows(samples: torch.Tensor | None, start: int, stop: int) -> slice | torch.Tensor:
    """The pool rows of positions start..stop-1 of `samples` (None: the pool itself)."""
    return slice(start, stop) if samples is None else samples[start:stop]
