"""Rate against distortion: post-hoc quantizations paired with VQ-VAEs at equal bits per image,
and the (bits per image, MSE) points of every source for the rate–distortion figure.

An *entry* is compare's figures of one source: {"kind", "bits_per_image", "metric", "vae",
"decoder", "per_position", "splits": {split: {"mse_per_pixel", "utilisation", ...}}}.
"""

from __future__ import annotations

import math
from typing import Any


def equal_rate_pairs(entries: dict[str, dict], split: str) -> list[dict[str, Any]]:
    """Each post-hoc quantization beside every VQ-VAE with the same bits per image."""
    pairs = []
    for name, entry in entries.items():
        if entry["kind"] != "posthoc":
            continue
        for other, vq in entries.items():
            if vq["kind"] != "vqvae" or not math.isclose(
                vq["bits_per_image"], entry["bits_per_image"]
            ):
                continue
            ours, theirs = entry["splits"][split], vq["splits"][split]
            if "mse_per_pixel" not in ours or "mse_per_pixel" not in theirs:
                continue
            pairs.append(
                {
                    "posthoc": name,
                    "vqvae": other,
                    "bits_per_image": entry["bits_per_image"],
                    "posthoc_mse": ours["mse_per_pixel"],
                    "vqvae_mse": theirs["mse_per_pixel"],
                    "mse_ratio": ours["mse_per_pixel"] / theirs["mse_per_pixel"],
                    "posthoc_utilisation": ours["utilisation"],
                    "vqvae_utilisation": theirs["utilisation"],
                }
            )
    return pairs


def pair_notes(pairs: list[dict[str, Any]]) -> list[str]:
    """One line per equal-rate pair saying which side reconstructs better."""
    return [
        f"{p['posthoc']} vs {p['vqvae']} at {p['bits_per_image']:.0f} bits/image: "
        f"MSE ratio {p['mse_ratio']:.3f} "
        f"({'post hoc better' if p['mse_ratio'] <= 1 else 'VQ-VAE better'})"
        for p in pairs
    ]


def family_of(entry: dict[str, Any]) -> str:
    """The curve a source belongs to: VQ-VAE, or post hoc by metric, codebook, VAE and decoder."""
    if entry["kind"] == "vqvae":
        return "vq-vae"
    latent = entry.get("vae") or "flat"
    refit = " + refit" if entry["decoder"].endswith("decoder.safetensors") else ""
    per_position = " per-position" if entry["per_position"] else ""
    return f"post-hoc {entry['metric']}{per_position} ({latent}){refit}"


def rate_points(entries: dict[str, dict], split: str) -> list[dict[str, Any]]:
    """{"name", "family", "bits_per_image", "mse"} of every source with reconstructions."""
    return [
        {
            "name": name,
            "family": family_of(entry),
            "bits_per_image": entry["bits_per_image"],
            "mse": entry["splits"][split]["mse_per_pixel"],
        }
        for name, entry in entries.items()
        if "mse_per_pixel" in entry["splits"].get(split, {})
    ]
