"""`benchmark.hierarchy=auto`: subdomains from the classes the weak generalist confuses.

A specialist is worth having where the generalist errs (docs/design.md, "Why specialists"), so
classes the generalist confuses should share a subdomain: its specialist then sees more examples
of exactly the classes it must tell apart. The hierarchy is chosen in three steps:

1. A *confusion probe* (`csl_avalanche.benchmarks.confusion_probe`): the generalist's architecture,
   trained with the teachers' budget and seed exactly as teacher 0 is, on the teacher split
   minus a held-out part (`benchmark.auto_holdout`, stratified and seeded); its confusion
   matrix is counted on that held-out part. This is labelled data the supervisor owns: the
   pool and the test split are never read.
2. The confusion becomes a class affinity (row-normalised, symmetrised, zero diagonal).
3. Size-balanced average-linkage agglomerative clustering on the affinity, cut at each
   requested number of subdomains (`benchmark.auto_levels`), gives nested partitions: one
   sequence of merges, so every level refines the one above by construction.

Why size-balanced: plain average linkage leaves a class the generalist rarely confuses (a
digit 6, Fashion-MNIST's Trouser or Bag) alone until the very end, since its affinity to
everything is near zero. That gives 9 | 1 splits and one-class specialists, which can only
ever predict their own class: useless teachers. So on the way down to k subdomains a merge may
not make a group larger than ceil(C / k) classes (C classes); once the cut at k is taken, the
bound is ceil(C / k') for the next smaller size k'. A lonely class is thus paired with its
best remaining partner instead of waiting. When every merge would break the bound (e.g. all
clusters just above half of it), the best merge among those that make the smallest group is
taken, so the levels stay as even as the lower levels allow.

Then every teacher, the generalist included, trains as usual on the whole teacher split on the
chosen hierarchy. The probe exists only to pick the groups, so a run with `hierarchy=auto`
differs from a run with the same groups picked by hand in nothing else: the comparison of
hierarchies is fair (same teachers' data, budget and seed), and the held-out part costs the
teachers no data.

This module holds the math (pure functions on tensors) and the setting; the probe, which
trains, lives with the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy

AUTO = "auto"
LEVELS_KEY = "benchmark.auto_levels"
HOLDOUT_KEY = "benchmark.auto_holdout"
DEFAULT_HOLDOUT = 0.2  # the held-out fraction of the teacher split where none is given


def confusion_matrix(
    predictions: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Counts [C, C]: entry (i, j) is how many samples of class i were predicted as j."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def class_affinity(confusion: torch.Tensor) -> torch.Tensor:
    """How much the generalist mixes up each pair of classes, [C, C] float64, symmetric, zero on
    the diagonal: the mean of P(predicted j | class i) and P(predicted i | class j). A class
    without held-out samples has a zero row (it is confused with nothing it was seen as)."""
    counts = confusion.double()
    totals = counts.sum(dim=1, keepdim=True)
    rates = torch.where(totals > 0, counts / totals.clamp(min=1), torch.zeros_like(counts))
    affinity = (rates + rates.T) / 2
    affinity.fill_diagonal_(0)
    return affinity


def merged_confusion(confusion: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """The confusion between groups of classes, [G, G]: entry (g, h) counts the samples of a
    class of group g predicted as a class of group h (e.g. an Avalanche benchmark's
    experiences, whose class sets are fixed)."""
    membership = torch.zeros(confusion.shape[0], len(groups), dtype=torch.long)
    for index, group in enumerate(groups):
        membership[list(group), index] = 1
    return membership.T @ confusion.long() @ membership


def check_sizes(
    sizes: Sequence[int],
    num_classes: int | None,
    what: str = LEVELS_KEY,
    *,
    drop: str = f"benchmark.hierarchy={AUTO}",
) -> None:
    """`sizes` (subdomains per level after the generalist) must be strictly increasing whole
    numbers in 2..num_classes (None: the number of classes is not known yet). Where no size
    fits (num_classes < 2), the error says to `drop` the automatic hierarchy."""
    largest = num_classes if num_classes is not None else float("inf")
    valid = (
        len(sizes) > 0
        and all(isinstance(k, int) and not isinstance(k, bool) for k in sizes)
        and all(2 <= k <= largest for k in sizes)
        and all(a < b for a, b in zip(sizes, sizes[1:], strict=False))
    )
    if valid:
        return
    if largest < 2:
        raise ConfigError(
            f"{what}={list(sizes)}: no level fits between the generalist and the finest one "
            f"here, since a level needs 2 or more subdomains and at most {num_classes} fit; "
            f"drop {drop}"
        )
    bound = "2 or more" if num_classes is None else f"in 2..{num_classes}"
    example = ",".join(str(k) for k in ([2] if largest == 2 else [2, min(largest, 5)]))
    raise ConfigError(
        f"{what}={list(sizes)} must list the number of subdomains of each level after the "
        f"generalist, strictly increasing, each {bound}, e.g. {what}=[{example}]"
    )


def nested_groups(
    affinity: torch.Tensor, sizes: Sequence[int], *, what: str = LEVELS_KEY
) -> list[list[list[int]]]:
    """Size-balanced average-linkage agglomerative clustering of the C classes on `affinity`,
    cut at each of `sizes` clusters: one partition per size, each refining the one before.

    Every step merges the two clusters of highest mean pairwise affinity among those whose
    union has at most ceil(C / k) classes, k the largest size not reached yet (so no level
    gets one-class subdomains merely because a class is rarely confused; see the module
    docstring); if no pair fits, among the pairs whose union is smallest. Among equal scores,
    the pair with the smallest class index, then the smallest class index of the other cluster
    (so classes never confused, all-zero affinity, are merged in index order). Groups are
    sorted lists, ordered by their smallest class. A size of C gives singletons.
    """
    num_classes = affinity.shape[0]
    check_sizes(sizes, num_classes, what)
    # Cluster p is stored at the position of its smallest class p: merging p < q keeps p.
    members = [[c] for c in range(num_classes)]
    linkage = affinity.double().clone()  # summed affinity between the clusters at p and q
    counts = torch.ones(num_classes, dtype=torch.float64)
    active = torch.ones(num_classes, dtype=torch.bool)
    upper = torch.ones(num_classes, num_classes, dtype=torch.bool).triu(diagonal=1)
    partitions: dict[int, list[list[int]]] = {}
    for clusters in range(num_classes, sizes[0] - 1, -1):
        if clusters in sizes:
            partitions[clusters] = [sorted(members[p]) for p in active.nonzero().flatten()]
        if clusters == sizes[0]:
            break
        bound = math.ceil(num_classes / max(k for k in sizes if k < clusters))
        mean = linkage / torch.outer(counts, counts)
        allowed = upper & active[:, None] & active[None, :]
        union = counts[:, None] + counts[None, :]
        smallest = torch.where(allowed, union, torch.inf).min()
        allowed &= union <= max(bound, smallest)  # none fits the bound: the smallest unions
        mean = torch.where(allowed, mean, torch.full_like(mean, -torch.inf))
        p, q = divmod(int(mean.flatten().argmax()), num_classes)  # first maximum: the tie rule
        members[p] += members[q]
        linkage[p] += linkage[q]
        linkage[:, p] += linkage[:, q]
        counts[p] += counts[q]
        active[q] = False
    return [partitions[k] for k in sizes]


def hierarchy_from_confusion(
    confusion: torch.Tensor, sizes: Sequence[int], *, what: str = LEVELS_KEY
) -> Hierarchy:
    """The generalist over all classes, then the clustered levels of `sizes` subdomains."""
    num_classes = confusion.shape[0]
    levels = nested_groups(class_affinity(confusion), sizes, what=what)
    return Hierarchy([[list(range(num_classes))], *levels], num_classes)


@dataclass(frozen=True)
class AutoHierarchy:
    """A hierarchy still to be chosen from the probe's confusion (`benchmark.hierarchy=auto`):
    `sizes` subdomains per level after the generalist, `holdout` the held-out fraction of the
    teacher split. `csl_avalanche.benchmarks.confusion_probe.resolve` turns it into a Hierarchy."""

    sizes: tuple[int, ...]
    holdout: float
    num_classes: int

    def __post_init__(self) -> None:
        check_sizes(self.sizes, self.num_classes)
