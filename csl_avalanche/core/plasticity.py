"""Shrink and perturb (Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020):
a network trained on earlier data learns new data worse than a fresh one (a loss of
plasticity); moving its weights part of the way back towards a fresh initialisation restores
some of it while keeping most of what it knows.

The variant here: every parameter that a fresh initialisation draws becomes
`shrink * theta + noise * theta_fresh`, where `theta_fresh` is that parameter in a freshly
initialised copy of the network (the same initialiser, a new draw). shrink=1, noise=0 leaves
the network as it is; shrink=0, noise=1 replaces it by the fresh draw.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def shrink_perturb(
    weights: Mapping[str, torch.Tensor],
    fresh: Mapping[str, torch.Tensor],
    shrink: float,
    noise: float,
) -> dict[str, torch.Tensor]:
    """`shrink * weights[name] + noise * fresh[name]` for every name in `fresh`; a weight
    without a fresh draw (its module has no initialiser) is kept as it is."""
    return {
        name: shrink * value + noise * fresh[name] if name in fresh else value
        for name, value in weights.items()
    }
