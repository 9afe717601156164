"""The confusion probe of `benchmark.hierarchy=auto` (`csl_avalanche.core.clustering`): the
weak generalist's confusions, counted on a held-out part of the teacher split, never on the
pool or the test split. Cached like every other trained step."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from csl_avalanche.benchmarks.splits import smallest_fraction, stratified_split
from csl_avalanche.benchmarks.teachers import train_teachers
from csl_avalanche.core.clustering import (
    DEFAULT_HOLDOUT,
    HOLDOUT_KEY,
    AutoHierarchy,
    confusion_matrix,
    hierarchy_from_confusion,
)
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy
from csl_avalanche.models.fit import predict
from csl_avalanche.storage.cache import TensorCache, fingerprint

log = logging.getLogger(__name__)


def probe_confusion(
    x: torch.Tensor,
    y: torch.Tensor,
    make_model: Callable[[], nn.Module],
    *,
    num_classes: int,
    holdout: float,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    what: str = HOLDOUT_KEY,
) -> torch.Tensor:
    """The probe's confusion counts [C, C] on the held-out part of the teacher split (x, y).

    The probe is teacher 0 of `train_teachers` (the same factory, budget and seed) with the
    held-out rows given a unit no subdomain holds, so that it trains on the rest only. `what`
    names the holdout setting in errors.
    """
    held_out = _held_out_rows(y, holdout, seed, what)
    units = y.clone()
    units[held_out] = -1
    generalist = Hierarchy([[list(range(num_classes))]], num_classes)
    (probe,) = train_teachers(
        generalist,
        x,
        y,
        make_model,
        units=units,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=False,  # one model: no bar
    )
    predictions = [predict(probe, x[rows]).argmax(dim=1).cpu() for rows in held_out.split(4096)]
    return confusion_matrix(torch.cat(predictions), y[held_out], num_classes)


def cached_confusion(
    spec: AutoHierarchy,
    x: torch.Tensor,
    y: torch.Tensor,
    make_model: Callable[[], nn.Module],
    *,
    identity: object,
    budget: dict,
    seed: int,
    cache: TensorCache,
    what: str = HOLDOUT_KEY,
) -> torch.Tensor:
    """`probe_confusion`, cached. `identity` identifies the teacher data and `make_model` (the
    teachers' own cache-key parts); `budget` holds the teachers' steps, batch_size and lr;
    `what` names the holdout setting in errors."""
    budget = {k: budget[k] for k in ("steps", "batch_size", "lr")}
    num_classes = spec.num_classes
    key = fingerprint("auto-confusion", identity, num_classes, budget, seed, spec.holdout)

    def compute() -> torch.Tensor:
        log.info("hierarchy=auto: training the confusion probe")
        return probe_confusion(
            x,
            y,
            make_model,
            num_classes=num_classes,
            holdout=spec.holdout,
            seed=seed,
            what=what,
            **budget,
        )

    return cache.get_or_compute("auto-confusion", key, compute, check=_confusion_fault)


def resolve(
    spec: AutoHierarchy | Hierarchy,
    x: torch.Tensor,
    y: torch.Tensor,
    make_model: Callable[[], nn.Module],
    *,
    class_names: Sequence[str] | None = None,
    **confusion_args,
) -> Hierarchy:
    """A given Hierarchy as it is; an AutoHierarchy clustered from the probe's confusion
    (arguments: `cached_confusion`), logged with the class names where there are some."""
    if isinstance(spec, Hierarchy):
        return spec
    confusion = cached_confusion(spec, x, y, make_model, **confusion_args)
    hierarchy = hierarchy_from_confusion(confusion, spec.sizes)
    for level, groups in enumerate(hierarchy.levels[1:], start=1):
        shown = " | ".join(
            ", ".join(class_names[c] if class_names else str(c) for c in group) for group in groups
        )
        log.info("hierarchy=auto, level %d (%d subdomains): %s", level, len(groups), shown)
    return hierarchy


def _confusion_fault(confusion: object) -> str | None:
    if not isinstance(confusion, torch.Tensor) or confusion.dim() != 2:
        return "not a [C, C] matrix of counts"
    if confusion.is_floating_point() or bool((confusion < 0).any()):
        return "counts must be non-negative integers"
    return None


def _held_out_rows(y: torch.Tensor, holdout: float, seed: int, what: str) -> torch.Tensor:
    """The rows of the teacher split held out for the probe (stratified, seeded): a
    ConfigError naming `what`, with a value that works, where they or the rest are empty."""
    if not 0 < holdout < 1:
        raise ConfigError(f"{what}={holdout} must be a fraction in (0, 1), e.g. {DEFAULT_HOLDOUT}")
    held_out = stratified_split(y, {"held_out": holdout}, seed)["held_out"]
    fewest = int(torch.unique(y, return_counts=True)[1].min())
    if len(held_out) == 0:
        raise ConfigError(
            f"{what}={holdout} holds out no example of the teacher split ({len(y)} examples, "
            f"{fewest} in its smallest class), so the confusion probe has nothing to be measured "
            f"on; use {what}={smallest_fraction(fewest)} or more, which holds out at least one "
            "example of every class"
        )
    if len(held_out) == len(y):
        largest = round(1 - smallest_fraction(fewest), 6)
        raise ConfigError(
            f"{what}={holdout} holds out the whole teacher split ({len(y)} examples, {fewest} "
            f"in its smallest class), leaving the confusion probe nothing to train on; use "
            f"{what}={largest} or less, which leaves at least one example of every class"
        )
    return held_out
