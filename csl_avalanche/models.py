"""Student and teacher networks for the embedded benchmarks, by name.

The student is a backbone plus a linear head; with a frozen backbone, its embeddings are cached
and the Avalanche strategy trains only the head (`linear_probe`) on tensors.
"""

from __future__ import annotations

from torch import nn


def mlp_backbone(in_dim: int, hidden: int, embed_dim: int) -> nn.Module:
    """A small MLP feature extractor for flat inputs (digits' stand-in for a foundation model)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim), nn.ReLU()
    )


def pooled_linear_teacher(side: int, pool: int, num_classes: int) -> nn.Module:
    """A deliberately weak teacher: average-pool a side x side image by `pool`, then linear."""
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.AvgPool2d(pool),
        nn.Flatten(),
        nn.Linear((side // pool) ** 2, num_classes),
    )


def linear_probe(in_dim: int, num_classes: int) -> nn.Linear:
    return nn.Linear(in_dim, num_classes)
