"""A plain supervised loop for the preparation steps outside the CSL stream.

Backbone pretraining and weak-teacher training use it: both are fixed-budget (a number of
steps, each a batch drawn with replacement from the given examples), seeded, and need none of
Avalanche's machinery.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    subset: torch.Tensor | None = None,
) -> nn.Module:
    """Train `model` with Adam and cross-entropy for exactly `steps` batches; returns it in eval.

    Batches are drawn from the rows `subset` of x (default: all), gathered per batch so a large
    memory-mapped x is never copied whole, and moved to the model's device.
    """
    rows = torch.arange(len(x)) if subset is None else subset
    if len(rows) == 0:
        raise ValueError("cannot train on an empty set of examples")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    model.train()
    for _ in range(steps):
        idx = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs (eval mode) for all of `x`, in batches, on the model's device.

    The model's train/eval mode is restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out
