"""Seeded, stratified, disjoint splits of a labelled dataset."""

from __future__ import annotations

from collections.abc import Mapping

import torch


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
        start, cumulative = 0, 0.0
        for name, fraction in fractions.items():
            cumulative += fraction
            stop = round(cumulative * len(members))
            parts[name].append(members[start:stop])
            start = stop
    return {name: torch.cat(chunks).sort().values for name, chunks in parts.items()}
