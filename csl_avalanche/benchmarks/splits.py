"""Seeded, stratified, disjoint splits of a labelled dataset."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping

import torch

from csl_avalanche.core.errors import ConfigError


def stratified_split(
    labels: torch.Tensor, fractions: Mapping[str, float], seed: int
) -> dict[str, torch.Tensor]:
    """Split sample indices into named, disjoint parts with the same class proportions.

    `fractions` maps part name -> fraction of every class; they must sum to at most 1 (the
    rest is left unused). Returns name -> sorted LongTensor of indices.
    """
    if any(f <= 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
        raise ValueError(f"split fractions must be positive and sum to at most 1: {fractions}")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in fractions}
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for name, size in part_sizes(len(members), fractions).items():
            parts[name].append(members[start : start + size])
            start += size
    return {name: torch.cat(chunks).sort().values for name, chunks in parts.items()}


def part_sizes(count: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """How many of a class's `count` samples each part gets (rounded; the rest is unused)."""
    sizes, start, cumulative = {}, 0, 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        stop = round(cumulative * count)
        sizes[name] = stop - start
        start = stop
    return sizes


def smallest_fraction(count: int) -> float:
    """The smallest fraction, at two significant digits, whose part of `count` samples is at
    least one sample (`part_sizes` rounds half to even: 0.5 gives none)."""
    bound = 0.5 / count
    step = 10.0 ** (math.floor(math.log10(bound)) - 1)
    steps = math.ceil(bound / step)
    while part_sizes(count, {"part": steps * step})["part"] < 1:
        steps += 1
    return round(steps * step, 1 - math.floor(math.log10(step)))


def min_class_size(fractions: Mapping[str, float]) -> int:
    """The smallest count from which on every part gets at least one sample of a class."""
    # From 2 / (smallest fraction) on, each part's share is >= 2 and rounding moves each of
    # its bounds by at most 1/2; below that, rounding can leave a part empty.
    needed = math.ceil(2 / min(fractions.values()))
    while needed > 1 and min(part_sizes(needed - 1, fractions).values()) > 0:
        needed -= 1
    return needed


def first_short_class(
    labels: torch.Tensor, fractions: Mapping[str, float]
) -> tuple[int, int] | None:
    """(label, count) of the first class too small for every part to get one of its samples,
    or None."""
    values, counts = torch.unique(labels, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        if min(part_sizes(count, fractions).values()) == 0:
            return value, count
    return None


def checked_split(
    strata: torch.Tensor,
    fractions: Mapping[str, float],
    seed: int,
    *,
    what: str,
    parts: Collection[str],
    describe: Callable[[int, int], str],
) -> dict[str, torch.Tensor]:
    """`stratified_split` of a benchmark's data, checked for the user: `fractions` (the config
    key `what`) names exactly `parts`, and every stratum is large enough for each part to get
    one of its samples. `describe(stratum, count)` words a stratum that is too small ("class 7
    has 5 samples"); the ConfigError says how many it needs."""
    fractions = {name: float(value) for name, value in fractions.items()}
    if set(fractions) != set(parts):
        raise ConfigError(f"{what} must name exactly {sorted(parts)}, got {sorted(fractions)}")
    try:
        split = stratified_split(strata, fractions, seed)
    except ValueError as err:
        raise ConfigError(f"{what}: {err}") from None
    if short := first_short_class(strata, fractions):
        raise ConfigError(
            f"{what}: {describe(*short)}, too few for {what}={fractions}: each of "
            f"{', '.join(fractions)} must get at least one of them, which needs at least "
            f"{min_class_size(fractions)}; add samples or raise the smallest fraction"
        )
    return split
