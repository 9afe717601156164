"""Student and teacher networks for the embedded benchmarks, and the fine-tuned image student.

The student is a backbone plus a linear head; with a frozen backbone, its embeddings are cached
and the Avalanche strategy trains only the head (`linear_probe`) on tensors. With
`student.finetune=true` the whole network trains on cached images (`ImageStudent`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
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


class ImageStudent(nn.Module):
    """A whole image classifier to fine-tune: images [B, 3, S, S] in (uint8, or float in
    [0, 1]), logits out.

    In training mode every batch is augmented on its own device (`random_resized_crop_and_flip`,
    drawn from torch's global RNG); in eval mode the images pass unchanged. Then they are
    normalised with the model's `mean` and `std` and fed to `model`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: tuple[float, float] = (0.25, 1.0),
    ):
        super().__init__()
        self.model = model
        self.crop_scale = crop_scale
        # Not persistent: the state_dict is the model's alone (prefixed "model.").
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if self.training:
            x = random_resized_crop_and_flip(x, self.crop_scale)
        return self.model((x - self.mean) / self.std)


@torch.no_grad()
def random_resized_crop_and_flip(
    images: torch.Tensor,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Per image: a random box of `scale` of the area and aspect `ratio` (log-uniform),
    placed uniformly inside the image, resized back to the input size (bilinear), and
    mirrored with probability 1/2. One batched affine resampling of [B, C, H, W] floats."""
    b, device = images.shape[0], images.device
    area = torch.empty(b, device=device).uniform_(*scale)
    aspect = torch.empty(b, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    # The box's width and height as fractions of the image's: its half-sizes in [-1, 1] units.
    half_w = (area * aspect).sqrt().clamp(max=1)
    half_h = (area / aspect).sqrt().clamp(max=1)
    flip = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = half_w * flip
    theta[:, 0, 2] = (torch.rand(b, device=device) * 2 - 1) * (1 - half_w)
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = (torch.rand(b, device=device) * 2 - 1) * (1 - half_h)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
