"""The continuous VAE whose latents geovq quantizes after training.

Two latent layouts share one encoder/decoder trunk:
- ``flat``: the trunk's map is flattened and a linear layer gives mu and log sigma^2 (D dims).
- ``spatial``: a 1x1 conv gives an (h, w, C) map of mu and log sigma^2, stored position-major as
  D = h*w*C dims, so chunking by C puts one chunk per spatial position.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geovq.models.blocks import TRUNK_CHANNELS, decoder_trunk, encoder_trunk, trunk_grid


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a VAE; stored as JSON in the weights' metadata."""

    channels: int = 1
    height: int = 28
    width: int = 28
    latent: str = "flat"
    latent_dim: int = 32
    spatial_channels: int = 4
    trunk: str = "reference"

    @property
    def grid(self) -> tuple[int, int]:
        """Trunk feature-map size (h, w)."""
        return trunk_grid((self.height, self.width))

    @property
    def total_latent_dim(self) -> int:
        """D: the length of one image's flattened mu."""
        if self.latent == "spatial":
            h, w = self.grid
            return h * w * self.spatial_channels
        return self.latent_dim

    @property
    def latent_grid(self) -> tuple[int, int] | None:
        """(h, w) of a spatial latent, None for a flat one."""
        return self.grid if self.latent == "spatial" else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VAEConfig:
        return cls(**json.loads(text))


class VAE(nn.Module):
    """Images (N, C, H, W) in [0, 1] <-> latents (N, D); the decoder returns pixel logits."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if config.latent not in ("flat", "spatial"):
            raise ValueError(f"unknown latent layout {config.latent!r}")
        self.config = config
        h, w = config.grid
        self.encoder = encoder_trunk(config.trunk, config.channels)
        self.decoder = decoder_trunk(config.trunk, config.channels)
        if config.latent == "flat":
            self.to_stats = nn.Linear(TRUNK_CHANNELS * h * w, 2 * config.latent_dim)
            self.from_latent = nn.Linear(config.latent_dim, TRUNK_CHANNELS * h * w)
        else:
            self.to_stats = nn.Conv2d(TRUNK_CHANNELS, 2 * config.spatial_channels, 1)
            self.from_latent = nn.Conv2d(config.spatial_channels, TRUNK_CHANNELS, 1)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> mu, logvar, each (N, D)."""
        features = self.encoder(images)
        if self.config.latent == "flat":
            stats = self.to_stats(features.flatten(1))
            return stats.chunk(2, dim=1)
        stats = self.to_stats(features)  # (N, 2C, h, w)
        mu, logvar = stats.chunk(2, dim=1)
        return _position_major(mu), _position_major(logvar)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, D) latents -> (N, C, H, W) pixel logits."""
        h, w = self.config.grid
        if self.config.latent == "flat":
            features = self.from_latent(latents).view(-1, TRUNK_CHANNELS, h, w)
        else:
            maps = latents.view(-1, h, w, self.config.spatial_channels).permute(0, 3, 1, 2)
            features = self.from_latent(maps)
        return self.decoder(torch.relu(features))

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass: returns (logits, mu, logvar)."""
        mu, logvar = self.encode(images)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def _position_major(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h*w*C) with the C values of one position contiguous."""
    return maps.permute(0, 2, 3, 1).flatten(1)


def recon_kind(setting: str, channels: int) -> str:
    """``auto``: Bernoulli (bce) for grayscale, Gaussian (mse) for RGB."""
    if setting != "auto":
        return setting
    return "bce" if channels == 1 else "mse"


def reconstruction_loss(logits: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image reconstruction loss summed over pixels, averaged over the batch.

    ``bce`` is Bernoulli likelihood on [0, 1] pixels (grayscale); ``mse`` is Gaussian (RGB).
    """
    if kind == "bce":
        total = F.binary_cross_entropy_with_logits(logits, images, reduction="sum")
    else:
        total = F.mse_loss(torch.sigmoid(logits), images, reduction="sum")
    return total / images.shape[0]


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over dims, averaged over the batch (closed form)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) of each latent dimension (D,), averaged over the batch."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean(0)


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, floor_nats: float) -> torch.Tensor:
    """KL with a free-bits floor (Kingma et al. 2016, "Improved Variational Inference with
    Inverse Autoregressive Flow"): Σ_d max(floor, batch-mean KL of dim d).

    A dimension below the floor costs a constant, so the optimiser has no reason to switch it
    off; the reported KL stays ``kl_divergence``.
    """
    return torch.clamp(kl_per_dim(mu, logvar), min=floor_nats).sum()
