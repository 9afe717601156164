"""Weak teachers: one frozen model per subdomain, each with the same training budget.

Teacher k draws its training batches only from examples of its own classes, for the same
number of steps as every other teacher, so a specialist sees more examples per class than the
generalist; that is what makes specialists worth having (docs/design.md, "Why specialists").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from csl_avalanche.errors import ConfigError
from csl_avalanche.fit import fit_classifier, predict
from csl_avalanche.hierarchy import Hierarchy


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
) -> list[nn.Module]:
    """Train one teacher per subdomain of every level, in global teacher order.

    A teacher trains on the examples whose unit is in its subdomain: the class (`units=None`),
    or e.g. the input domain of each example (`units` [N], DomainNet). Examples are indexed,
    not copied, so `x` may be a memory-mapped cache.
    """
    units = y if units is None else units
    subdomains = [sub for level in hierarchy.levels for sub in level]
    teachers = []
    for index, members in enumerate(tqdm(subdomains, desc="weak teachers", leave=False)):
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


def teacher_probabilities(teachers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Class probabilities of every teacher on `x`: [T, N, C]."""
    return torch.stack([predict(teacher, x).softmax(dim=1) for teacher in teachers])
