"""``geovq quantize``: cluster the VAE's latent chunks into a codebook, after training.

Each latent (N, D) is split into L chunks of C = D/L dims, each a diagonal Gaussian
(mu, sigma). A codebook of K codewords is fitted on ``--fit-split`` with the chosen metric and
every split gets codes (N, H, W), H*W = L. Written to ``quant/<name>/``.
"""

from __future__ import annotations

import json
import math
import resource
import time

import torch

from geovq import GeovqError
from geovq.artifacts import (
    CodesMeta,
    Quantization,
    VaeFiles,
    latent_splits,
    load_latents,
    load_vae,
    split_images,
)
from geovq.evaluation.reconstruction import decoded_mse, quantization_metrics
from geovq.progress import NullProgress
from geovq.quant.codebook import assign_codes, chunk_latents
from geovq.quant.settings_fit import codebook_size, fit_from_settings, scalar_levels
from geovq.quant.transform import check_budget
from geovq.rundir import RunDir
from geovq.settings import QuantizeSettings, Settings, parse_grid
from geovq.stages.record import StageResult, StageRun, check_finite, stage
from geovq.training import resolve_device

FLAT_DEFAULT_CHUNKS = 8


def default_name(q: QuantizeSettings, vae_name: str | None = None) -> str:
    """``{metric}-k{K}``, ``geodesic-bary-k{K}`` for barycentric codewords, ``-pp`` for
    per-position codebooks, ``-{vae}`` for a named VAE (K = ∏ levels when scalar has levels)."""
    if q.name:
        return q.name
    suffix = ("-pp" if q.codebook == "per-position" else "") + (f"-{vae_name}" if vae_name else "")
    metric = "geodesic-bary" if q.metric == "geodesic" and q.codeword == "barycenter" else q.metric
    k = math.prod(q.levels) if q.metric == "scalar" and q.levels else q.k
    return f"{metric}-k{k}{suffix}"


def stage_key(name: str) -> str:
    return Quantization("quant", name).key


def chunk_grid(
    q: QuantizeSettings, latent_dim: int, spatial: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    """(L, (H, W)): chunks per latent and the code grid the prior sees.

    Defaults: one chunk per spatial position on an H x W grid for spatial latents; 8 chunks on a
    2x4 grid for flat ones.
    """
    chunks = q.chunks or (spatial[0] * spatial[1] if spatial else FLAT_DEFAULT_CHUNKS)
    if latent_dim % chunks:
        raise GeovqError(
            f"--chunks {chunks} does not divide the latent dimension {latent_dim}; "
            f"use a divisor of {latent_dim}"
        )
    if q.grid is not None:
        grid = parse_grid(q.grid)
    elif spatial and chunks == spatial[0] * spatial[1]:
        grid = spatial
    elif chunks == FLAT_DEFAULT_CHUNKS:
        grid = (2, 4)
    else:
        grid = (1, chunks)
    if grid[0] * grid[1] != chunks:
        raise GeovqError(
            f"--grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} cells but there are {chunks} "
            f"chunks; use a grid with H*W = {chunks}"
        )
    return chunks, grid


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    q = settings.quantize
    files = VaeFiles(settings.vae.name)
    name = default_name(q, files.name)
    quant = Quantization("quant", name)
    record = StageRun(run_dir, quant.key, None, device, settings.seed, settings.force)
    latents, latents_meta = load_latents(record, files)
    splits = latent_splits(latents)
    # Recorded per split, not as the whole file: a split added later (extract --as) leaves
    # the codebook current and gets its codes on the fly where it is used.
    record.narrow_to_splits(files.latents, latents, splits)
    latent_dim = latents[f"{splits[0]}.mu"].shape[1]
    chunks, grid = chunk_grid(q, latent_dim, latents_meta.grid)
    chunk_dim = latent_dim // chunks
    k = codebook_size(q, chunk_dim)
    if q.fit_split not in splits:
        raise GeovqError(
            f"--fit-split {q.fit_split} is not in the latents; choose one of {', '.join(splits)}"
        )
    record.settle(
        {"quantize": json.loads(q.model_dump_json()), "vae": files.name, "seed": settings.seed}
    )
    for split in splits:
        for part in ("mu", "logvar"):
            check_finite(
                latents[f"{split}.{part}"],
                f"the latents' {split}.{part}",
                f"retrain the VAE (e.g. with a lower --lr) and rerun `geovq extract{files.flag}`",
            )
    mu = {s: chunk_latents(latents[f"{s}.mu"], chunks) for s in splits}
    sigma = {s: chunk_latents(torch.exp(0.5 * latents[f"{s}.logvar"]), chunks) for s in splits}
    _check_sizes(q, k, mu[q.fit_split])
    vae, _ = load_vae(record, device, files)
    images = split_images(record, latents_meta, files)

    progress.start(f"quantize {name}: fit on {q.fit_split}")
    started = time.perf_counter()
    fit = fit_from_settings(q, mu[q.fit_split], sigma[q.fit_split], settings.seed, device=device)
    fit_seconds = time.perf_counter() - started
    progress.finish()

    codes: dict[str, torch.Tensor] = {}
    split_metrics: dict[str, dict] = {}
    # extract measured decoding mu when it wrote these latents (verified above); older runs'
    # records lack it, so it is decoded here
    continuous = ((record.record_of(files.extract_key) or {}).get("metrics") or {}).get(
        "mse_per_pixel", {}
    )
    for split in splits:
        split_codes = (
            fit.codes
            if split == q.fit_split
            else assign_codes(fit, mu[split], sigma[split], assign=q.assign, device=device)
        )
        codes[split] = split_codes
        split_metrics[split] = quantization_metrics(
            fit.codebook, split_codes, mu[split], sigma[split], vae.decode, images[split], device
        )
        split_metrics[split]["vae_mse_per_pixel"] = continuous.get(split) or decoded_mse(
            vae.decode, latents[f"{split}.mu"], images[split], device
        )

    per_position = q.codebook == "per-position"
    metadata = CodesMeta(
        kind="posthoc",
        k=k,
        grid=grid,
        source=quant.source,
        per_position=per_position,
        metric=q.metric,
        chunks=chunks,
        vae=files.name,
        fit_split=q.fit_split,
    ).to_metadata()
    record.write(quant.codebook, fit.codebook.tensors(), metadata)
    tensors = {}
    for split in splits:
        tensors[f"{split}.codes"] = codes[split].reshape(-1, *grid).to(torch.int64)
        tensors[f"{split}.labels"] = latents[f"{split}.labels"]
    record.write(quant.codes, tensors, metadata)
    metrics = {
        "name": name,
        "kind": "posthoc",
        "metric": q.metric,
        "codeword": q.codeword if q.metric == "geodesic" else None,
        "levels": list(scalar_levels(q, chunk_dim)) if q.metric == "scalar" else None,
        "k": k,
        "grid": list(grid),
        "chunks": chunks,
        "per_position": per_position,
        "bits_per_image": chunks * math.log2(k),
        "fit_points": int(mu[q.fit_split].shape[0] * (1 if per_position else chunks)),
        "fit_seconds": round(fit_seconds, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fit_info": {k: v for k, v in fit.info.items() if isinstance(v, int | float | str | bool)},
        "splits": split_metrics,
    }
    record.finish(metrics)
    return StageResult(
        quant.key,
        metrics,
        record.outputs,
        title=(
            f"quantize {name} ({chunks} chunks, {metrics['bits_per_image']:.0f} bits/image, "
            f"fit {fit_seconds:.1f} s)"
        ),
        columns=[
            "split",
            "mse/pixel",
            "vae mse/pixel",
            "utilisation",
            "dead",
            "perplexity",
            "distortion W2²",
        ],
        rows=[
            [
                split,
                f"{m['mse_per_pixel']:.5f}",
                f"{m['vae_mse_per_pixel']:.5f}",
                f"{m['utilisation']:.1%}",
                str(m["dead_codes"]),
                f"{m['perplexity']:.1f}",
                f"{m['distortion']:.4f}",
            ]
            for split, m in split_metrics.items()
        ],
    )


def _check_sizes(q: QuantizeSettings, k: int, fit_mu: torch.Tensor) -> None:
    """K and the graph's k must fit the number of points each codebook is fitted on; scalar
    levels must give one count per chunk dimension."""
    n_images, chunks, chunk_dim = fit_mu.shape
    points = n_images if q.codebook == "per-position" else n_images * chunks
    if q.metric == "transform":
        if q.codebook == "per-position":
            raise GeovqError(
                "--metric transform codes the whole latent: it has no per-position codebooks; "
                "drop --codebook per-position"
            )
        try:
            check_budget(chunks * chunk_dim, chunks, k)
        except ValueError as error:
            raise GeovqError(str(error)) from None
        if n_images < 2:
            raise GeovqError(f"--metric transform needs at least 2 latents to fit; got {n_images}")
        return
    if q.metric == "scalar":
        if q.levels is not None and len(q.levels) != chunk_dim:
            raise GeovqError(
                f"--levels {','.join(map(str, q.levels))} gives {len(q.levels)} levels but a "
                f"chunk has {chunk_dim} dimensions; pass {chunk_dim} levels, e.g. --levels "
                + ",".join(["4"] * chunk_dim)
            )
        return
    if k > points:
        raise GeovqError(
            f"--k {k} is more than the {points} points to fit; use --k {points} or less"
        )
    if q.metric == "geodesic" and q.knn >= points:
        raise GeovqError(
            f"--knn {q.knn} must be less than the {points} points; use a smaller --knn"
        )
