"""Metrics shared by every stage: code usage, rate and reconstruction quality.

All functions are pure and take the totals of a split (all its codes, all its images), so a
split's metric is never a mean of per-batch values.
"""

from __future__ import annotations

import math

import torch


def code_counts(codes: torch.Tensor, k: int, per_position: bool = False) -> torch.Tensor:
    """Codeword counts of (N, H, W) or (N, L) int codes in [0, K).

    Shared: (K,) counts over all positions. Per position: (L, K) counts, where position l is
    the flattened raster index of (h, w).
    """
    if codes.dim() < 2:
        raise ValueError(f"codes must be (N, L) or (N, H, W), got shape {tuple(codes.shape)}")
    if codes.numel() == 0:
        raise ValueError("codes are empty")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    flat = codes.reshape(codes.shape[0], -1).long()
    if flat.min() < 0 or flat.max() >= k:
        raise ValueError(f"codes must lie in [0, {k}), got [{flat.min()}, {flat.max()}]")
    if not per_position:
        return torch.bincount(flat.flatten(), minlength=k)
    positions = flat.shape[1]
    # One bincount over (position, code) pairs encoded as position * K + code.
    offsets = torch.arange(positions, device=flat.device) * k
    pair_index = (flat + offsets).flatten()
    return torch.bincount(pair_index, minlength=positions * k).view(positions, k)


def utilisation(counts: torch.Tensor) -> float:
    """Share of entries of counts ((K,) or (L, K)) that are used (count > 0)."""
    _check_counts(counts)
    return (counts > 0).double().mean().item()


def dead_codes(counts: torch.Tensor) -> int:
    """Number of entries of counts ((K,) or (L, K)) that are never used (count == 0)."""
    _check_counts(counts)
    return int((counts == 0).sum().item())


def perplexity(counts: torch.Tensor) -> float:
    """2 ** entropy (bits) of the code-usage distribution: the effective number of codewords.

    For (K,) counts this is the perplexity of the shared usage. For (L, K) per-position counts
    it is the mean over positions of each position's own perplexity (every position must be
    used at least once). Uniform use of K codes gives K; a single code gives 1.
    """
    _check_counts(counts)
    rows = counts.double().reshape(-1, counts.shape[-1])
    totals = rows.sum(dim=1, keepdim=True)
    if (totals == 0).any():
        raise ValueError("perplexity needs at least one count (per position)")
    probs = rows / totals
    # 0 * log 0 = 0: xlogy handles the unused codes.
    entropy_bits = -torch.special.xlogy(probs, probs).sum(dim=1) / math.log(2)
    return torch.exp2(entropy_bits).mean().item()


def bits_per_image(positions: int, k: int) -> float:
    """Rate of an image coded as `positions` independent indices into K codewords."""
    if positions < 1 or k < 1:
        raise ValueError(f"positions and k must be >= 1, got positions={positions}, k={k}")
    return positions * math.log2(k)


def summarize_codes(codes: torch.Tensor, k: int, per_position: bool = False) -> dict[str, float]:
    """Usage and rate of a split's codes (N, H, W) or (N, L), from the split's total counts."""
    counts = code_counts(codes, k, per_position=per_position)
    positions = codes[0].numel()
    return {
        "utilisation": utilisation(counts),
        "dead_codes": dead_codes(counts),
        "perplexity": perplexity(counts),
        "bits_per_image": bits_per_image(positions, k),
    }


def mse_per_pixel(reconstructions: torch.Tensor, images: torch.Tensor) -> float:
    """Mean squared error over all pixels (and channels) of images in [0, 1]."""
    _check_pair(reconstructions, images)
    diff = reconstructions.double() - images.double()
    return diff.pow(2).mean().item()


@torch.no_grad()
def decoded_mse(
    decode, latents: torch.Tensor, images_u8: torch.Tensor, device: torch.device, batch: int = 1000
) -> float:
    """MSE per pixel between sigmoid(decode(latents)) and uint8 images, from the split's totals
    (batched, so memory stays bounded)."""
    sq_err = 0.0
    for start in range(0, latents.shape[0], batch):
        recon = torch.sigmoid(decode(latents[start : start + batch].to(device))).float()
        target = images_u8[start : start + batch].to(device).float() / 255.0
        sq_err += float(((recon - target) ** 2).sum())
    return sq_err / images_u8[0].numel() / images_u8.shape[0]


def psnr(reconstructions: torch.Tensor, images: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB, data range 1) over the whole set: 10 log10(1 / MSE)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # ~2 s: only when used

    _check_pair(reconstructions, images)
    value = peak_signal_noise_ratio(reconstructions.double(), images.double(), data_range=1.0)
    return value.item()


def ssim(reconstructions: torch.Tensor, images: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Mean structural similarity (Wang et al. 2004; data range 1) over all images (N, C, H, W).

    Per-image SSIMs are summed chunk by chunk to bound memory, then divided by N.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(reconstructions, images)
    if images.dim() != 4:
        raise ValueError(f"ssim needs (N, C, H, W) images, got shape {tuple(images.shape)}")
    total = 0.0
    for start in range(0, images.shape[0], batch_size):
        per_image = structural_similarity_index_measure(
            reconstructions[start : start + batch_size].float(),
            images[start : start + batch_size].float(),
            data_range=1.0,
            reduction="none",
        )
        total += per_image.double().sum().item()
    return total / images.shape[0]


def _check_counts(counts: torch.Tensor) -> None:
    if counts.dim() not in (1, 2) or counts.numel() == 0:
        raise ValueError(f"counts must be non-empty (K,) or (L, K), got {tuple(counts.shape)}")


def _check_pair(reconstructions: torch.Tensor, images: torch.Tensor) -> None:
    if reconstructions.shape != images.shape:
        raise ValueError(
            f"shapes differ: reconstructions {tuple(reconstructions.shape)} "
            f"vs images {tuple(images.shape)}"
        )
    if images.numel() == 0:
        raise ValueError("images are empty")
