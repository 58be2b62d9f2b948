"""Rate–distortion sweep: the same quantizer fitted at several K, each point (bits per image,
decoded MSE per pixel) on the evaluated split."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from geovq.evaluation.reconstruction import Decode, decoded_mse
from geovq.quant.codebook import QuantizerFit, assign_codes, codeword_latents


def sweep_points(
    fit_at: Callable[[int], QuantizerFit],
    ks: list[int],
    decode: Decode,
    images_u8: torch.Tensor,
    device: torch.device,
    *,
    mu: torch.Tensor | None,
    sigma: torch.Tensor | None,
    assign: str,
    family: str,
    label: str,
    vae: str = "",
    on_point: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """One {"name", "family", "method", "refit", "vae", "bits_per_image", "mse", "sweep"} point
    per K, decoded by the VAE's own decoder (no refit); ``label`` is the method (e.g. w2).

    ``fit_at(K)`` fits the codebook on the fit split; the evaluated split's chunk Gaussians
    mu, sigma (N, L, C) get codes by ``assign`` — or None when the evaluated split is the fit
    split, whose codes come with the fit. ``images_u8`` are the evaluated split's images.
    """
    points = []
    for k in ks:
        fit = fit_at(k)
        codes = fit.codes if mu is None else assign_codes(fit, mu, sigma, assign=assign)
        mse = decoded_mse(decode, codeword_latents(fit.codebook, codes), images_u8, device)
        points.append(
            {
                "name": f"{label}-k{k} (sweep)",
                "k": k,
                "family": family,
                "method": label,
                "refit": False,
                "vae": vae,
                "bits_per_image": codes.shape[1] * math.log2(k),
                "mse": mse,
                "sweep": True,
            }
        )
        if on_point is not None:
            on_point()
    return points
