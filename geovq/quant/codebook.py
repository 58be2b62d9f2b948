"""Codebooks of chunk Gaussians: fit one on VAE latents, assign codes, decode codes to latents.

A latent (N, D) splits into L chunks of C = D / L dims, each a diagonal Gaussian (mu, sigma).
A codebook holds K codewords (mu, sigma), shared by all L positions (K, C) or one per position
(L, K, C); codes (N, L) index it. A transform code (metric "transform") has no codewords of
chunks: its codes are one bit string per image over the whole latent (see quant.transform).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from geovq.quant.distances import check_metric, metric_features, nearest_center
from geovq.quant.geodesic import (
    ASSIGN_MODES,
    GeodesicFit,
    assign_geodesic,
    check_edge_weight,
    check_knn,
    fit_from_medoids,
    geodesic_kmedoids,
)
from geovq.quant.kmeans import check_k, kmeans
from geovq.quant.scalar import (
    lloyd_max_1d,
    pack_codes,
    product_codebook,
    scalar_level_indices,
)
from geovq.quant.transform import TransformCode, fit_transform
from geovq.quant.transform import decode as transform_decode
from geovq.quant.transform import encode as transform_encode

CODEWORDS = ("medoid", "barycenter")


@dataclass
class Codebook:
    """Codeword means and standard deviations: shared (K, C) or per position (L, K, C).

    A geodesic codebook also keeps its cells' medoids, (K,) or (L, K) indices into the fit
    chunks (flattened when shared): with barycentric codewords they are the only way back to
    the graph partition that assigns new points. A transform code keeps ``transform`` and
    empty (0, 0) mu and sigma."""

    mu: Tensor
    sigma: Tensor
    metric: str
    medoids: Tensor | None = None
    transform: TransformCode | None = None

    @property
    def per_position(self) -> bool:
        return self.mu.ndim == 3

    @property
    def k(self) -> int:
        return self.transform.k if self.transform is not None else self.mu.shape[-2]

    def tensors(self) -> dict[str, Tensor]:
        """What the codebook file holds (``from_tensors`` reads it back)."""
        if self.transform is not None:
            return self.transform.tensors()
        words = {"mu": self.mu, "sigma": self.sigma}
        if self.medoids is not None:
            words["medoids"] = self.medoids
        return words

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], metric: str, k: int) -> Codebook:
        """The codebook a file's ``tensors`` hold; ValueError if they are not one."""
        if metric == "transform":
            code = TransformCode.from_tensors(tensors, k)
            empty = torch.empty(0, 0, dtype=torch.float64)
            return cls(empty, empty, metric, transform=code)
        try:
            return cls(tensors["mu"], tensors["sigma"], metric, tensors.get("medoids"))
        except KeyError as missing:
            raise ValueError(f"the codebook lacks {missing}") from None

    def to(self, device: torch.device | str) -> Codebook:
        """The codewords on ``device`` (what decoding needs; medoids stay behind)."""
        transform = self.transform.to(device) if self.transform is not None else None
        return Codebook(self.mu.to(device), self.sigma.to(device), self.metric, None, transform)


@dataclass
class QuantizerFit:
    """A fitted codebook, the codes (N, L) int64 of the fit points, and fit figures in `info`
    (JSON-friendly; "objective" is the k-means inertia, a sum of squared distances, or for
    geodesic the sum of geodesic distances to the medoids). `geodesic_fits` keeps the graph
    fits (one, or one per position) that assign_codes needs for new points."""

    codebook: Codebook
    codes: Tensor
    info: dict
    knn: int = 10
    geodesic_fits: list[GeodesicFit] = field(default_factory=list, repr=False)


def chunk_latents(latents: Tensor, chunks: int) -> Tensor:
    """(N, D) -> (N, L, C) with L = chunks and C = D / L."""
    if latents.ndim != 2:
        raise ValueError(f"latents must be (N, D), got shape {tuple(latents.shape)}")
    dim = latents.shape[1]
    if chunks < 1 or dim % chunks:
        raise ValueError(f"chunks must divide the latent dimension {dim}, got {chunks}")
    return latents.reshape(latents.shape[0], chunks, dim // chunks)


def fit_codebook(
    mu: Tensor,
    sigma: Tensor,
    k: int,
    metric: str,
    *,
    per_position: bool = False,
    seed: int = 0,
    restarts: int = 1,
    iters: int = 100,
    tol: float = 1e-4,
    knn: int = 10,
    edge_weight: str = "w2",
    device: torch.device | str | None = None,
    codeword: str = "medoid",
    levels: tuple[int, ...] | None = None,
) -> QuantizerFit:
    """Fit a codebook of K codewords on chunk Gaussians mu, sigma (N, L, C).

    Shared: all N * L chunks pooled; per position: one codebook per position l on mu[:, l].
    euclidean/w2: k-means (restarts, iters, tol as in `kmeans`) on mu or [mu, sigma];
    codewords are the cluster means of mu and sigma. geodesic: k-medoids on the kNN graph
    (knn, edge_weight; iters, tol, restarts as in `geodesic_kmedoids`); codewords are
    the medoid chunks. A non-CPU `device` (a GPU) runs k-means, the code assignment and the
    kNN graph's neighbour search there; everything returned is on the CPU.
    Geodesic codewords are the medoids, or with codeword="barycenter" each cell's W2
    barycenter (the mean of [mu, sigma] over the cell). scalar: one Lloyd–Max quantizer per
    dimension with ``levels[c]`` levels (K = ∏ levels, `k` is ignored); codewords the grid.
    transform: the whole latent transform-coded in L log2 K bits (quant.transform).
    """
    _check_chunks(mu, sigma)
    check_metric(metric)
    check_edge_weight(edge_weight)
    if codeword not in CODEWORDS:
        raise ValueError(f"unknown codeword {codeword!r}: choose one of {', '.join(CODEWORDS)}")
    n, positions, chunk = mu.shape
    if metric == "transform":
        if per_position:
            raise ValueError("a transform code spans the whole latent: it has no per-position form")
        return _fit_transform_code(mu, sigma, k)
    points_per_fit = n if per_position else n * positions
    if metric == "scalar":
        k = _check_levels(levels, chunk)
    else:
        check_k(k, points_per_fit)
    if metric == "geodesic":
        check_knn(knn, points_per_fit)
    started = time.perf_counter()
    if per_position:
        groups = [(mu[:, position], sigma[:, position]) for position in range(positions)]
    else:
        groups = [(mu.reshape(-1, mu.shape[-1]), sigma.reshape(-1, sigma.shape[-1]))]
    settings = _FitSettings(restarts, iters, tol, knn, edge_weight, device, codeword, levels)
    fits = [
        _fit_group(group_mu, group_sigma, k, metric, seed + index, settings)
        for index, (group_mu, group_sigma) in enumerate(groups)
    ]
    medoids = None
    if per_position:
        codebook_mu = torch.stack([f.mu for f in fits])
        codebook_sigma = torch.stack([f.sigma for f in fits])
        codes = torch.stack([f.labels for f in fits], dim=1)
    else:
        codebook_mu, codebook_sigma = fits[0].mu, fits[0].sigma
        codes = fits[0].labels.reshape(n, positions)
    if metric == "geodesic":
        medoids = torch.stack([torch.from_numpy(f.geodesic.medoids) for f in fits])
        medoids = medoids if per_position else medoids[0]
    info = {
        "metric": metric,
        "k": k,
        "per_position": per_position,
        "points": points_per_fit,
        "fit_seconds": time.perf_counter() - started,
        "objective": sum(f.objective for f in fits),
        "iterations": [f.iterations for f in fits],
        "components_joined": sum(f.components_joined for f in fits),
    }
    return QuantizerFit(
        codebook=Codebook(codebook_mu, codebook_sigma, metric, medoids),
        codes=codes,
        info=info,
        knn=knn,
        geodesic_fits=[f.geodesic for f in fits if f.geodesic is not None],
    )


def _fit_transform_code(mu: Tensor, sigma: Tensor, k: int) -> QuantizerFit:
    n, positions, _ = mu.shape
    started = time.perf_counter()
    code = fit_transform(mu.reshape(n, -1), sigma.reshape(n, -1), positions, k)
    codes = transform_encode(code, mu.reshape(n, -1))
    error = mu.detach().cpu().double().reshape(n, -1) - transform_decode(code, codes)
    empty = torch.empty(0, 0, dtype=torch.float64)
    info = {
        "metric": "transform",
        "k": k,
        "per_position": False,
        "points": n,
        "fit_seconds": time.perf_counter() - started,
        "objective": float((error**2).sum()),
        "iterations": [0],
        "components_joined": 0,
        "axes_with_bits": int((code.bits > 0).sum()),
        "max_axis_bits": int(code.bits.max()),
    }
    codebook = Codebook(empty, empty.clone(), "transform", transform=code)
    return QuantizerFit(codebook=codebook, codes=codes, info=info)


@dataclass
class _FitSettings:
    restarts: int
    iters: int
    tol: float
    knn: int
    edge_weight: str
    device: torch.device | str | None
    codeword: str = "medoid"
    levels: tuple[int, ...] | None = None


def _check_levels(levels: tuple[int, ...] | None, chunk: int) -> int:
    """K = ∏ levels for a scalar quantizer of C-dim chunks; ValueError unless len(levels) = C."""
    if not levels or len(levels) != chunk or min(levels) < 1:
        raise ValueError(
            f"scalar quantization needs one level count >= 1 per chunk dimension ({chunk}), "
            f"got {list(levels) if levels else None}; pass e.g. --levels " + ",".join(["4"] * chunk)
        )
    return math.prod(levels)


@dataclass
class _GroupFit:
    """One codebook: codewords (K, C), labels (M,), and the fit's figures."""

    mu: Tensor
    sigma: Tensor
    labels: Tensor
    objective: float
    iterations: int
    components_joined: int = 0
    geodesic: GeodesicFit | None = None


def _fit_group(
    mu: Tensor, sigma: Tensor, k: int, metric: str, seed: int, settings: _FitSettings
) -> _GroupFit:
    """One codebook on chunks mu, sigma (M, C)."""
    if metric == "geodesic":
        return _fit_geodesic(mu, sigma, k, seed, settings)
    if metric == "scalar":
        return _fit_scalar(mu, sigma, settings.levels)
    result = kmeans(
        metric_features(mu, sigma, metric),
        k,
        restarts=settings.restarts,
        iters=settings.iters,
        tol=settings.tol,
        seed=seed,
        device=settings.device,
    )
    if metric == "w2":  # the centroid in [mu, sigma] is the W2 barycenter
        code_mu, code_sigma = result.centers.split(mu.shape[1], dim=1)
    else:  # euclidean: sigma is the mean sigma of each cluster's members
        code_mu, code_sigma = result.centers, _cluster_mean(sigma, result.labels, k)
    code_mu = code_mu.detach().cpu().to(mu.dtype).contiguous()
    code_sigma = code_sigma.detach().cpu().to(sigma.dtype).contiguous()
    # codes of the codewords as stored (rounded to the input dtype), as assign_codes gives them
    codewords = metric_features(code_mu, code_sigma, metric)
    labels = nearest_center(metric_features(mu, sigma, metric), codewords, device=settings.device)[
        0
    ]
    return _GroupFit(code_mu, code_sigma, labels, result.inertia, result.iterations)


def _fit_geodesic(
    mu: Tensor, sigma: Tensor, k: int, seed: int, settings: _FitSettings
) -> _GroupFit:
    points = metric_features(mu, sigma, "geodesic").detach().cpu().double().numpy()
    fit = geodesic_kmedoids(
        points,
        k,
        knn=settings.knn,
        edge_weight=settings.edge_weight,
        iters=settings.iters,
        tol=settings.tol,
        restarts=settings.restarts,
        seed=seed,
        device=settings.device,
    )
    medoids = torch.from_numpy(fit.medoids)
    labels = torch.from_numpy(fit.labels)
    if settings.codeword == "barycenter":
        # W2 between diagonal Gaussians is Euclidean on [mu, sigma], so a cell's W2
        # barycenter is the plain mean of its members' mu and sigma.
        code_mu, code_sigma = _cluster_mean(mu, labels, k), _cluster_mean(sigma, labels, k)
    else:
        code_mu, code_sigma = mu.detach().cpu()[medoids], sigma.detach().cpu()[medoids]
    return _GroupFit(
        code_mu.clone(),
        code_sigma.clone(),
        labels,
        fit.objective,
        fit.iterations,
        fit.components_joined,
        fit,
    )


def _fit_scalar(mu: Tensor, sigma: Tensor, levels: tuple[int, ...]) -> _GroupFit:
    """Per-dimension Lloyd–Max on mu (M, C); sigma's levels are the mean sigma of each level's
    members, dimension by dimension, so the product codebook stays a product."""
    # levels rounded to mu's dtype first, so the codes are those of the codewords as stored
    centers = [
        lloyd_max_1d(mu[:, dim], count).to(mu.dtype).double() for dim, count in enumerate(levels)
    ]
    indices = scalar_level_indices(mu, centers)
    sigma_levels = [
        _cluster_mean(sigma[:, dim : dim + 1], indices[:, dim], count)[:, 0].double()
        for dim, count in enumerate(levels)
    ]
    code_mu = product_codebook(centers).to(mu.dtype)
    code_sigma = product_codebook(sigma_levels).to(sigma.dtype)
    labels = pack_codes(indices, levels)
    chosen = torch.stack([centers[dim][indices[:, dim]] for dim in range(len(levels))], dim=1)
    objective = float(((mu.detach().cpu().double() - chosen) ** 2).sum())
    return _GroupFit(code_mu.contiguous(), code_sigma.contiguous(), labels, objective, 0)


def _cluster_mean(values: Tensor, labels: Tensor, k: int) -> Tensor:
    """Mean (K, C) of the rows of each cluster; an empty cluster gets the overall mean."""
    values64 = values.detach().cpu().double()
    sums = torch.zeros(k, values.shape[1], dtype=torch.float64).index_add_(0, labels, values64)
    counts = torch.bincount(labels, minlength=k).unsqueeze(1)
    means = sums / counts.clamp_min(1)
    return torch.where(counts > 0, means, values64.mean(0)).to(values.dtype)


def assign_codes(
    fit: QuantizerFit,
    mu: Tensor,
    sigma: Tensor,
    assign: str = "geodesic",
    device: torch.device | str | None = None,
) -> Tensor:
    """Codes (N, L) int64 of chunk Gaussians mu, sigma (N, L, C) under a fitted codebook.

    euclidean codebooks: nearest codeword mu; w2: nearest codeword in W2. geodesic codebooks:
    assign="geodesic" goes through the fit's kNN graph (assign_geodesic), assign="w2" takes
    the nearest medoid in W2. `assign` only matters for geodesic codebooks. Nearest-codeword
    searches run on `device` (CPU when None); the codes come back on the CPU.
    """
    if assign not in ASSIGN_MODES:
        raise ValueError(f"unknown assign mode {assign!r}: choose one of {', '.join(ASSIGN_MODES)}")
    _check_chunks(mu, sigma)
    codebook = fit.codebook
    n, positions, chunk = mu.shape
    if codebook.transform is not None:
        return transform_encode(codebook.transform, mu.reshape(n, -1)).to(torch.int64)
    if chunk != codebook.mu.shape[-1]:
        raise ValueError(f"chunks have {chunk} dims, the codebook has {codebook.mu.shape[-1]}")
    if codebook.per_position and positions != codebook.mu.shape[0]:
        raise ValueError(f"{positions} positions, the codebook has {codebook.mu.shape[0]}")
    metric = codebook.metric
    if codebook.per_position:
        codes = [
            _assign_group(
                fit, position, mu[:, position], sigma[:, position], metric, assign, device
            )
            for position in range(positions)
        ]
        return torch.stack(codes, dim=1)
    flat_mu, flat_sigma = mu.reshape(-1, chunk), sigma.reshape(-1, chunk)
    codes = _assign_group(fit, 0, flat_mu, flat_sigma, metric, assign, device)
    return codes.reshape(n, positions)


def _assign_group(
    fit: QuantizerFit,
    index: int,
    mu: Tensor,
    sigma: Tensor,
    metric: str,
    assign: str,
    device: torch.device | str | None,
) -> Tensor:
    """Codes (M,) of chunks mu, sigma (M, C) under codebook `index` (0 when shared)."""
    codebook = fit.codebook
    code_mu = codebook.mu[index] if codebook.per_position else codebook.mu
    code_sigma = codebook.sigma[index] if codebook.per_position else codebook.sigma
    if metric == "geodesic" and assign == "geodesic":
        points = metric_features(mu, sigma, metric).detach().cpu().double().numpy()
        labels = assign_geodesic(fit.geodesic_fits[index], points, fit.knn, mode="geodesic")
        return torch.from_numpy(np.asarray(labels, dtype=np.int64))
    features = metric_features(mu, sigma, metric)
    centers = metric_features(code_mu, code_sigma, metric)
    return nearest_center(features, centers, device=device)[0]


def restore_fit(
    codebook: Codebook, mu: Tensor, sigma: Tensor, *, knn: int = 10, edge_weight: str = "w2"
) -> QuantizerFit:
    """A fit rebuilt from a saved codebook and the chunks mu, sigma (N, L, C) it was fitted on,
    enough for `assign_codes` to give new points the codes the original fit would.

    Nearest-codeword codebooks need only the codebook. A geodesic codebook's cells are its
    medoids' on the fit's kNN graph, which is rebuilt: the medoids are ``codebook.medoids``,
    or (a codebook saved without them) found among the chunks as its medoid codewords.
    """
    _check_chunks(mu, sigma)
    codes = torch.empty(0, mu.shape[1], dtype=torch.int64)
    if codebook.metric != "geodesic":
        return QuantizerFit(codebook, codes, {"restored": True}, knn=knn)
    if codebook.per_position:
        groups = [(mu[:, p], sigma[:, p], p) for p in range(mu.shape[1])]
    else:
        flat_mu, flat_sigma = mu.reshape(-1, mu.shape[-1]), sigma.reshape(-1, sigma.shape[-1])
        groups = [(flat_mu, flat_sigma, None)]
    fits = []
    for group_mu, group_sigma, position in groups:
        points = metric_features(group_mu, group_sigma, "geodesic").detach().cpu().double().numpy()
        words = _codeword_features(codebook, position)
        if codebook.medoids is None:  # saved without medoids: the codewords are the medoids
            medoids = _medoids_among(points, words)
        else:
            medoids = codebook.medoids if position is None else codebook.medoids[position]
            medoids = medoids.detach().cpu().numpy().astype(np.int64)
            if medoids.min() < 0 or medoids.max() >= len(points):
                raise ValueError(_NOT_THE_FIT_CHUNKS)
        fit = fit_from_medoids(points, medoids, knn=knn, edge_weight=edge_weight)
        if codebook.medoids is not None:
            _check_cells_match(points, fit, words)
        fits.append(fit)
    return QuantizerFit(codebook, codes, {"restored": True}, knn=knn, geodesic_fits=fits)


_NOT_THE_FIT_CHUNKS = (
    "the geodesic codebook does not belong to these chunks: pass the chunks of the split it "
    "was fitted on"
)


def _codeword_features(codebook: Codebook, position: int | None) -> np.ndarray:
    word_mu = codebook.mu if position is None else codebook.mu[position]
    word_sigma = codebook.sigma if position is None else codebook.sigma[position]
    return metric_features(word_mu, word_sigma, "geodesic").detach().cpu().double().numpy()


def _medoids_among(points: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Indices (K,) of the codewords (K, F) among the fit points (N, F)."""
    gap, medoids = cKDTree(points).query(words, k=1)
    if np.max(gap) > 1e-6 * (1.0 + np.abs(words).max()):
        raise ValueError(_NOT_THE_FIT_CHUNKS)
    return medoids


def _check_cells_match(points: np.ndarray, fit: GeodesicFit, words: np.ndarray) -> None:
    """The restored partition must give back the saved codewords: each cell's medoid, or (for
    barycentric codewords) each cell's mean; otherwise these are not the fit's chunks."""
    scale = 1e-5 * (1.0 + np.abs(words).max())
    if np.abs(points[fit.medoids] - words).max() <= scale:
        return
    k = len(fit.medoids)
    counts = np.bincount(fit.labels, minlength=k)
    sums = np.zeros_like(words)
    np.add.at(sums, fit.labels, points)
    filled = counts > 0
    means = sums[filled] / counts[filled, None]
    if np.abs(means - words[filled]).max() > scale:
        raise ValueError(_NOT_THE_FIT_CHUNKS)


def codeword_latents(codebook: Codebook, codes: Tensor) -> Tensor:
    """Codes (N, L) -> codeword means (N, L * C), the latents to decode."""
    if codes.ndim != 2:
        raise ValueError(f"codes must be (N, L), got shape {tuple(codes.shape)}")
    codes = codes.to(torch.int64)
    if codebook.transform is not None:
        return transform_decode(codebook.transform, codes).to(torch.float32)
    if codebook.per_position:
        positions = torch.arange(codes.shape[1]).unsqueeze(0)
        chunks = codebook.mu[positions, codes]
    else:
        chunks = codebook.mu[codes]
    return chunks.reshape(codes.shape[0], -1)


def codeword_gaussians(codebook: Codebook, codes: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Codes (N, L) -> the decoded chunk Gaussians' mu and sigma, each (N, L, chunk)."""
    codes = codes.to(torch.int64)
    if codebook.transform is not None:
        n = codes.shape[0]
        word_mu = transform_decode(codebook.transform, codes).reshape(n, -1, chunk)
        word_sigma = codebook.transform.sigma.reshape(1, -1, chunk).expand_as(word_mu)
        return word_mu, word_sigma
    if codebook.per_position:
        positions = torch.arange(codes.shape[1])
        return codebook.mu[positions, codes], codebook.sigma[positions, codes]
    return codebook.mu[codes], codebook.sigma[codes]


def _check_chunks(mu: Tensor, sigma: Tensor) -> None:
    if mu.ndim != 3:
        raise ValueError(f"mu must be (N, L, C), got shape {tuple(mu.shape)}")
    if mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma shapes differ: {tuple(mu.shape)} vs {tuple(sigma.shape)}")
