"""Weak teachers: one frozen model per subdomain, each with the same training budget, and their
class probabilities, cached.

Teacher k draws its training batches only from examples of its own classes, for the same
number of steps as every other teacher, so a specialist sees more examples per class than the
generalist; that is what makes specialists worth having (docs/design.md, "Why specialists").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.models.fit import fit_classifier, predict
from csl_avalanche.storage.atomic import Blank
from csl_avalanche.storage.cache import TensorCache, fingerprint

# Cached teacher probabilities: half of float32's size, rounded by at most 2**-11 of each value.
TEACHER_PROBS_DTYPE = torch.float16


def train_teachers(
    hierarchy: Hierarchy,
    x: torch.Tensor,
    y: torch.Tensor,
    make_model: Callable[[], nn.Module],
    *,
    units: torch.Tensor | None = None,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
) -> list[nn.Module]:
    """Train one teacher per subdomain of every level, in global teacher order (a progress
    bar over the teachers where `progress`).

    A teacher trains on the examples whose unit is in its subdomain: the class (`units=None`),
    or e.g. the input domain of each example (`units` [N], DomainNet). Examples are indexed,
    not copied, so `x` may be a memory-mapped cache.
    """
    units = y if units is None else units
    subdomains = [sub for level in hierarchy.levels for sub in level]
    teachers = []
    bar = tqdm(subdomains, desc="weak teachers", disable=not progress, leave=False)
    for index, members in enumerate(bar):
        subset = torch.isin(units, torch.tensor(members)).nonzero().flatten()
        if not len(subset):
            raise ConfigError(
                f"teacher {index} (subdomain {list(members)}) has no training examples: the "
                "teacher training split holds none of its subdomain; give it more data"
            )
        torch.manual_seed(seed + index)
        teachers.append(
            fit_classifier(
                make_model(),
                x,
                y,
                subset=subset,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                seed=seed + index,
            )
        )
    return teachers


def fill_teacher_probabilities(
    teachers: list[nn.Module], x: torch.Tensor, out: torch.Tensor, *, batch_size: int = 4096
) -> None:
    """Write every teacher's class probabilities on `x` into `out` [T, N, C], in `out`'s dtype
    (float16 halves a cache), one teacher and one batch of rows at a time: `out` may be a
    memory-mapped file, and no [N, C] or [T, N, C] float32 tensor is built."""
    for index, teacher in enumerate(teachers):
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            probs = predict(teacher, x[rows], batch_size=batch_size).softmax(dim=1)
            out[index, rows] = probs.to("cpu", out.dtype)


def cached_teacher_probabilities(
    cache: TensorCache,
    key: str,
    teachers: list[nn.Module],
    inputs: Mapping[str, torch.Tensor],
    num_classes: int,
    *,
    check: Callable[[dict[str, torch.Tensor]], str | None],
    cause: str,
) -> dict[str, torch.Tensor]:
    """{part: [T, n, C]}: the teachers' probabilities on each part's inputs, in
    TEACHER_PROBS_DTYPE, memory-mapped from the cache entry `key`; on a miss written teacher
    by teacher into the preallocated entry (`TensorCache.get_or_fill`)."""
    blanks = {
        part: Blank((len(teachers), len(x), num_classes), TEACHER_PROBS_DTYPE)
        for part, x in inputs.items()
    }

    def fill(out: dict[str, torch.Tensor]) -> None:
        for part, x in inputs.items():
            fill_teacher_probabilities(teachers, x, out[part])

    key = fingerprint("teacher-probs", str(TEACHER_PROBS_DTYPE), key)
    return cache.get_or_fill("teacher-probs", key, blanks, fill, check=check, cause=cause)
