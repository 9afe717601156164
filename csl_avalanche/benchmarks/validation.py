"""The validation split (`benchmark.val_fraction`): labelled samples to tune settings on, from
the test split's distribution, that neither the student nor the teachers train on.

Every benchmark draws its transfer pool and its test split from the same distribution, so the
validation split is carved out of the pool, before anything trains: from each class, the
fraction `val_fraction` of its pool samples (rounded down, so every class keeps at least one),
drawn with the run's seed. The rest stays the pool: the student (ceiling, CSL, w2s, the joint
reference) never sees a validation sample, and since the pool shares nothing with the teachers'
data or the test split, neither does the validation split. The teachers' outputs on the pool
rows come with them, so the weak accuracy on validation is the generalist's there.

A features file may carry its own validation split (`val_x`, `val_y` and the teachers' outputs
on it); then `val_fraction` must stay 0. With `val_fraction=0` (the default) the features are
returned unchanged: the pool, every stream and every number are those of a run without it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.core.errors import ConfigError

KEY = "benchmark.val_fraction"


def validation_rows(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The pool rows (sorted) of the validation split: from each class of `labels`, a random
    floor(fraction * count) of its rows, drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique(sorted=True):
        rows = (labels == label).nonzero().flatten()
        count = int(fraction * len(rows))
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:count]])
    return torch.cat(chosen).sort().values if chosen else labels.new_zeros(0)


def with_validation(features: FeatureSet, fraction: float, seed: int) -> FeatureSet:
    """`features` with the validation split carved out of the pool (`validation_rows`); the
    features themselves where `fraction` is 0. The pool's tensors are copied without the
    validation rows (the teacher outputs too: a memory-mapped [T, N, C] is read whole once)."""
    if fraction == 0:
        return features
    if features.has_validation:
        raise ConfigError(
            f"{KEY}={fraction} carves a validation split out of the pool, but the features file "
            f"holds one already (val_x, val_y); drop {KEY} to use the file's"
        )
    val = validation_rows(features.train_y, fraction, seed)
    pool_size = len(features.train_y)
    if not len(val):
        largest = int(features.train_y.bincount().max())
        raise ConfigError(
            f"{KEY}={fraction} takes no sample from the pool ({pool_size} samples, at most "
            f"{largest} of a class): each class gives floor({fraction} x its count); use "
            f"{KEY}={math.ceil(1000 / largest) / 1000:g} or more, or 0 for no validation split"
        )
    keep = torch.ones(pool_size, dtype=torch.bool)
    keep[val] = False
    pool = keep.nonzero().flatten()
    train_domains = features.train_domains
    return dataclasses.replace(
        features,
        train_x=features.train_x[pool],
        train_y=features.train_y[pool],
        teacher_train_probs=features.teacher_train_probs[:, pool],
        train_domains=None if train_domains is None else train_domains[pool],
        val_x=features.train_x[val],
        val_y=features.train_y[val],
        teacher_val_probs=features.teacher_train_probs[:, val],
    )
