"""Encoder/decoder trunks shared by the VAE and the VQ-VAE, so both see the same capacity.

Two kinds, chosen by name (``--trunk``) and built by ``encoder_trunk``/``decoder_trunk`` so
that both models always get the same classes:
- ``reference``: the reference's two stride-2 4x4 convolutions down (C -> 128 -> 256) and two
  transposed ones up. Enough for 28x28 grayscale digits.
- ``residual``: the same down/up-sampling plus a 3x3 convolution and two residual blocks at the
  feature map on each side, as in van den Oord et al. 2017 ("Neural Discrete Representation
  Learning", section 4.1), for RGB images where the reference trunk blurs.
A 28x28 image gives a 256x7x7 feature map, a 32x32 image 256x8x8, with either kind.
"""

from __future__ import annotations

import torch
from torch import nn

TRUNK_CHANNELS = 256
TRUNKS = ("reference", "residual")
RESIDUAL_HIDDEN = 64  # bottleneck of a residual block (3x3 conv 256 -> 64, 1x1 conv 64 -> 256)
RESIDUAL_BLOCKS = 2


def trunk_grid(image_size: tuple[int, int]) -> tuple[int, int]:
    """Spatial size (h, w) of the encoder trunk's feature map for an (H, W) image."""
    height, width = image_size
    return height // 4, width // 4


def encoder_trunk(kind: str, in_channels: int) -> nn.Module:
    """The encoder trunk ``kind`` (one of TRUNKS) for images with ``in_channels`` channels."""
    return _pick(kind, EncoderTrunk, ResidualEncoderTrunk)(in_channels)


def decoder_trunk(kind: str, out_channels: int) -> nn.Module:
    """The decoder trunk ``kind`` (one of TRUNKS) giving ``out_channels`` channels of logits."""
    return _pick(kind, DecoderTrunk, ResidualDecoderTrunk)(out_channels)


def _pick(kind: str, reference: type[nn.Module], residual: type[nn.Module]) -> type[nn.Module]:
    if kind not in TRUNKS:
        raise ValueError(f"unknown trunk {kind!r}: use one of {TRUNKS}")
    return reference if kind == "reference" else residual


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


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) at constant shape (N, 256, h, w)."""

    def __init__(self, channels: int = TRUNK_CHANNELS, hidden: int = RESIDUAL_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.net(features)


class ResidualEncoderTrunk(nn.Module):
    """(N, C, H, W) images in [0, 1] -> (N, 256, H/4, W/4) features, with residual blocks."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 128, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, TRUNK_CHANNELS, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(TRUNK_CHANNELS, TRUNK_CHANNELS, kernel_size=3, padding=1),
            *[ResidualBlock() for _ in range(RESIDUAL_BLOCKS)],
            nn.ReLU(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ResidualDecoderTrunk(nn.Module):
    """(N, 256, h, w) features -> (N, C, 4h, 4w) pixel logits, with residual blocks."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(TRUNK_CHANNELS, TRUNK_CHANNELS, kernel_size=3, padding=1),
            *[ResidualBlock() for _ in range(RESIDUAL_BLOCKS)],
            nn.ReLU(),
            nn.ConvTranspose2d(TRUNK_CHANNELS, 128, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(128, out_channels, kernel_size=4, stride=2, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
