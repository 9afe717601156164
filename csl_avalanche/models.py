"""Student and teacher networks for the embedded benchmarks, by name.

The student is a backbone plus a linear head; with a frozen backbone, its embeddings are cached
and the Avalanche strategy trains only the head (`linear_probe`) on tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def small_cnn_backbone(side: int, channels: Sequence[int], embed_dim: int) -> nn.Module:
    """A small CNN for flat side x side grey images (Fashion-MNIST's stand-in for a foundation
    model): per entry of `channels` a stride-2 conv (5x5 first, then 3x3) and ReLU, then a
    linear layer from the flattened feature map to `embed_dim` features and ReLU."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, side, side))]
    in_channels, size = 1, side
    for index, out_channels in enumerate(channels):
        kernel = 5 if index == 0 else 3
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel, stride=2, padding=kernel // 2),
            nn.ReLU(),
        ]
        in_channels, size = out_channels, (size - 1) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(in_channels * size * size, embed_dim), nn.ReLU()]
    return nn.Sequential(*layers)
