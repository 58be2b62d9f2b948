"""How well a decoder reproduces a split's images: MSE per pixel, PSNR and SSIM, each from the
split's totals (never a mean of per-batch values)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from geovq.data import to_float
from geovq.metrics import decoded_mse, mse_per_pixel, psnr, ssim, summarize_codes
from geovq.quant.codebook import Codebook, codeword_gaussians, codeword_latents
from geovq.quant.distances import w2_sq

DECODE_BATCH = 1000

Decode = Callable[[torch.Tensor], torch.Tensor]  # latents (B, D) -> logits (B, C, H, W)


def reconstruction_figures(recons: torch.Tensor, images_u8: torch.Tensor) -> dict[str, float]:
    """MSE per pixel, PSNR (dB) and SSIM of reconstructions in [0, 1] against uint8 images."""
    images = to_float(images_u8)
    return {
        "mse_per_pixel": mse_per_pixel(recons, images),
        "psnr": psnr(recons, images),
        "ssim": ssim(recons, images),
    }


@torch.no_grad()
def decode_images(
    decode: Decode, latents: torch.Tensor, device: torch.device, batch: int = DECODE_BATCH
) -> torch.Tensor:
    """sigmoid(decode(latents)): latents (N, D) -> images (N, C, H, W) in [0, 1] on the CPU."""
    parts = [
        torch.sigmoid(decode(latents[start : start + batch].to(device))).float().cpu()
        for start in range(0, latents.shape[0], batch)
    ]
    return torch.cat(parts)


def quantization_metrics(
    codebook: Codebook,
    codes: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    decode: Decode,
    images_u8: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Usage, distortion (mean W2² chunk -> codeword) and decoded MSE per pixel of one split.

    codes (N, L), chunk Gaussians mu, sigma (N, L, C), images (N, C, H, W) uint8.
    """
    figures = summarize_codes(codes, codebook.k, per_position=codebook.per_position)
    word_mu, word_sigma = codeword_gaussians(codebook, codes, mu.shape[-1])
    figures["distortion"] = float(
        w2_sq(mu.double(), sigma.double(), word_mu.double(), word_sigma.double()).mean()
    )
    latents = codeword_latents(codebook, codes)
    figures["mse_per_pixel"] = decoded_mse(decode, latents, images_u8, device)
    return figures
