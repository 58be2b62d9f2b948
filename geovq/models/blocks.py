"""Encoder/decoder trunks shared by the VAE and the VQ-VAE, so both see the same capacity.

The trunk is the reference's: two stride-2 4x4 convolutions down (C -> 128 -> 256) and two
transposed ones up. A 28x28 image gives a 256x7x7 feature map, a 32x32 image 256x8x8.
"""

from __future__ import annotations

import torch
from torch import nn

TRUNK_CHANNELS = 256


def trunk_grid(image_size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size (h, w) of the encoder trunk's feature map for an (H, W) image."""
    height, width = image_size
    return height // 4, width // 4


class EncoderTrunk(nn.Module):
    """(N, C, H, W) images in [0, 1] -> (N, 256, H/4, W/4) features."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 128, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, TRUNK_CHANNELS, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class DecoderTrunk(nn.Module):
    """(N, 256, h, w) features -> (N, C, 4h, 4w) pixel logits (sigmoid gives images)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(TRUNK_CHANNELS, 128, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(128, out_channels, kernel_size=4, stride=2, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
