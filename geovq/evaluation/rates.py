"""Rate against distortion: post-hoc quantizations paired with VQ-VAEs at equal bits per image,
and the (bits per image, MSE) points of every source for the rate–distortion figures.

Two rates per source. *Nominal*: a fixed-length code spends L log2 K bits per image. *Prior*: a
code entropy-coded with its prior spends the prior's negative log-likelihood, summed over the L
positions (how learned compression is compared, Ballé et al. 2018); None without a prior.

An *entry* is compare's figures of one source: {"kind", "bits_per_image" (nominal), "metric",
"codeword", "vae", "decoder", "per_position", "splits": {split: {"mse_per_pixel",
"utilisation", ...}}, "prior": {"splits": {split: {"bits_per_image", ...}}} or None,
"budget"}.
"""

from __future__ import annotations

import math
from typing import Any

RATES = ("nominal", "prior")


def prior_bits_per_image(entry: dict[str, Any], split: str) -> float | None:
    """The prior's NLL of the split's codes in bits per image (bits per code × positions), or
    None where the source has no prior (or none evaluated on this split)."""
    prior = entry.get("prior") or {}
    return prior.get("splits", {}).get(split, {}).get("bits_per_image")


def bits_per_image(entry: dict[str, Any], split: str, rate: str) -> float | None:
    """The source's rate on the split: ``"nominal"`` (L log2 K) or ``"prior"`` (its NLL)."""
    if rate not in RATES:
        raise ValueError(f"rate must be one of {RATES}, got {rate!r}")
    return entry["bits_per_image"] if rate == "nominal" else prior_bits_per_image(entry, split)


def equal_rate_pairs(entries: dict[str, dict], split: str) -> list[dict[str, Any]]:
    """Each post-hoc quantization beside every VQ-VAE (or FSQ) with the same nominal bits per
    image; each pair also carries both members' prior rates and training budgets."""
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
                    "posthoc_prior_bits_per_image": prior_bits_per_image(entry, split),
                    "vqvae_prior_bits_per_image": prior_bits_per_image(vq, split),
                    "posthoc_mse": ours["mse_per_pixel"],
                    "vqvae_mse": theirs["mse_per_pixel"],
                    "mse_ratio": ours["mse_per_pixel"] / theirs["mse_per_pixel"],
                    "posthoc_utilisation": ours["utilisation"],
                    "vqvae_utilisation": theirs["utilisation"],
                    "posthoc_budget": entry.get("budget"),
                    "vqvae_budget": vq.get("budget"),
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


def method_of(entry: dict[str, Any]) -> str:
    """What made the codes: "vq-vae", "fsq", or the post-hoc metric ("geodesic-bary" for
    geodesic clusters with barycenter codewords)."""
    if entry["kind"] == "vqvae":
        return "fsq" if entry.get("metric") == "fsq" else "vq-vae"
    if entry["metric"] == "geodesic" and entry.get("codeword") == "barycenter":
        return "geodesic-bary"
    return entry["metric"]


def has_refit(entry: dict[str, Any]) -> bool:
    """Whether a post-hoc source decodes through its refit decoder."""
    return entry["kind"] == "posthoc" and entry["decoder"].endswith("decoder.safetensors")


def family_of(entry: dict[str, Any]) -> str:
    """The curve a source belongs to: VQ-VAE, FSQ, or post hoc by method, codebook, VAE and
    decoder."""
    method = method_of(entry)
    if entry["kind"] == "vqvae":
        return method
    latent = entry.get("vae") or "flat"
    refit = " + refit" if has_refit(entry) else ""
    per_position = " per-position" if entry["per_position"] else ""
    return f"post-hoc {method}{per_position} ({latent}){refit}"


def rate_points(
    entries: dict[str, dict], split: str, rate: str = "nominal"
) -> list[dict[str, Any]]:
    """{"name", "family", "method", "refit", "vae", "bits_per_image", "mse"} of every source
    with reconstructions, at the ``rate`` (see ``bits_per_image``); under ``"prior"`` the
    sources without a prior are left out (``without_prior_rate`` names them)."""
    points = []
    for name, entry in entries.items():
        figures = entry["splits"].get(split, {})
        bits = bits_per_image(entry, split, rate)
        if "mse_per_pixel" not in figures or bits is None:
            continue
        points.append(
            {
                "name": name,
                "family": family_of(entry),
                "method": method_of(entry),
                "refit": has_refit(entry),
                "vae": entry.get("vae") or "",
                "bits_per_image": bits,
                "mse": figures["mse_per_pixel"],
            }
        )
    return points


def without_prior_rate(entries: dict[str, dict], split: str) -> list[str]:
    """The sources with reconstructions but no prior rate on the split (no prior, or one that
    could not be evaluated there): left out of the prior-rate figure."""
    return [
        name
        for name, entry in entries.items()
        if "mse_per_pixel" in entry["splits"].get(split, {})
        and prior_bits_per_image(entry, split) is None
    ]
