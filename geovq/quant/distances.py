"""Distances between chunk points and codewords.

W2 between diagonal Gaussians N(mu_a, diag sigma_a^2) and N(mu_b, diag sigma_b^2) is
W2^2 = |mu_a - mu_b|^2 + |sigma_a - sigma_b|^2 (Dowson & Landau 1982 with commuting covariances),
so every W2 computation here is squared Euclidean distance on the features [mu, sigma].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

METRICS = ("euclidean", "w2", "geodesic", "scalar", "transform")

# Rows whose two nearest centers are closer than this (relative to the squared norms involved)
# are re-checked by explicit differences, so near-ties agree with a direct float64 computation.
_TIE_RTOL = 1e-9
_TIE_CHUNK_ROWS = 1024
# The same for float32 ranking (nearest_center_torch): float32 rounds at about 6e-8 relative.
_TIE_RTOL_FLOAT32 = 1e-5
# Elements (rows x centers) of one float32 distance block in nearest_center_torch: 128 MiB.
_BLOCK_ELEMENTS = 1 << 25


def check_metric(metric: str) -> None:
    """Raise ValueError unless `metric` is one of METRICS."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")


def sq_distances(x: Tensor, centers: Tensor) -> Tensor:
    """Squared Euclidean distances (N, F), (K, F) -> (N, K) through one matrix product."""
    x_sq = (x * x).sum(1, keepdim=True)
    centers_sq = (centers * centers).sum(1)
    return torch.addmm(x_sq + centers_sq, x, centers.T, alpha=-2.0).clamp_min_(0.0)


def nearest_center(
    x: Tensor, centers: Tensor, chunk_rows: int = 32768, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Nearest center of each row: labels (N,) int64 and squared distances (N,) float64.

    Float64 on the CPU, `chunk_rows` rows at a time so memory stays O(chunk_rows * K); rows
    with a near-tie are settled by explicit differences, so the result matches brute force.
    With a non-CPU `device` the work runs there (nearest_center_torch); results on the CPU.
    """
    if x.ndim != 2 or centers.ndim != 2 or x.shape[1] != centers.shape[1]:
        raise ValueError(
            f"nearest_center needs (N, F) and (K, F) tensors, got {tuple(x.shape)} "
            f"and {tuple(centers.shape)}"
        )
    if centers.shape[0] < 1:
        raise ValueError("nearest_center needs at least one center")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if device is not None and torch.device(device).type != "cpu":
        x64 = x.detach().to(device=device, dtype=torch.float64)
        centers64 = centers.detach().to(device=device, dtype=torch.float64)
        labels, dist_sq = nearest_center_torch(x64, centers64)
        return labels.cpu(), dist_sq.cpu()
    labels, dist_sq = nearest_center_np(_as_float64(x), _as_float64(centers), chunk_rows)
    return torch.from_numpy(labels), torch.from_numpy(dist_sq)


def nearest_center_np(
    x: np.ndarray, centers: np.ndarray, chunk_rows: int = 32768
) -> tuple[np.ndarray, np.ndarray]:
    """nearest_center on float64 numpy arrays (N, F), (K, F)."""
    centers_sq = np.einsum("kf,kf->k", centers, centers)
    labels = np.empty(len(x), dtype=np.int64)
    dist_sq = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), chunk_rows):
        rows = x[start : start + chunk_rows]
        chunk_labels = _nearest_rows(rows, centers, centers_sq)
        labels[start : start + len(rows)] = chunk_labels
        dist_sq[start : start + len(rows)] = ((rows - centers[chunk_labels]) ** 2).sum(1)
    return labels, dist_sq


def _nearest_rows(rows: np.ndarray, centers: np.ndarray, centers_sq: np.ndarray) -> np.ndarray:
    """Labels of the nearest center, near-ties settled by explicit differences."""
    # |x|^2 is the same for every center, so rank by |c|^2 - 2 x.c
    partial = rows @ (-2.0 * centers.T)
    partial += centers_sq
    labels = partial.argmin(1)
    if len(centers) == 1:
        return labels
    row_index = np.arange(len(rows))
    best = partial[row_index, labels].copy()
    partial[row_index, labels] = np.inf
    gap = partial.min(1) - best
    scale = np.einsum("nf,nf->n", rows, rows) + centers_sq.max()
    near_tie = np.flatnonzero(gap <= _TIE_RTOL * scale)
    for start in range(0, len(near_tie), _TIE_CHUNK_ROWS):
        tied = near_tie[start : start + _TIE_CHUNK_ROWS]
        exact = ((rows[tied, None, :] - centers[None, :, :]) ** 2).sum(2)
        labels[tied] = exact.argmin(1)
    return labels


def nearest_center_torch(x: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """nearest_center for float64 tensors (N, F), (K, F) on their own device (any).

    Centers are ranked with float32 products in blocks of rows; rows whose two best centers
    are within float32 rounding of each other are settled by explicit float64 differences, and
    the squared distances returned are float64 differences too, so labels match brute force.
    """
    centers32 = centers.float()
    centers_sq = (centers32 * centers32).sum(1)
    centers_sq_max = float(centers_sq.max())
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    rows = max(1, _BLOCK_ELEMENTS // centers.shape[0])
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        block32 = block.float()
        partial = torch.addmm(centers_sq[None, :], block32, centers32.T, alpha=-2.0)
        if centers.shape[0] == 1:
            labels[start : start + rows] = 0
            continue
        best = partial.topk(2, dim=1, largest=False)
        block_labels = best.indices[:, 0].clone()
        gap = best.values[:, 1] - best.values[:, 0]
        scale = (block32 * block32).sum(1) + centers_sq_max + 1e-30
        tied = (gap <= _TIE_RTOL_FLOAT32 * scale).nonzero().squeeze(1)
        for tie_start in range(0, len(tied), _TIE_CHUNK_ROWS):
            rows_tied = tied[tie_start : tie_start + _TIE_CHUNK_ROWS]
            exact = ((block[rows_tied, None, :] - centers[None, :, :]) ** 2).sum(2)
            block_labels[rows_tied] = exact.argmin(1)
        labels[start : start + rows] = block_labels
    dist_sq = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        block_labels = labels[start : start + rows]
        diff = x[start : start + rows].double() - centers.double()[block_labels]
        dist_sq[start : start + rows] = (diff * diff).sum(1)
    return labels, dist_sq


def _as_float64(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)


def w2_sq(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor) -> Tensor:
    """Squared W2 between diagonal Gaussians: elementwise over the leading dims, summed over the
    last."""
    return ((mu_a - mu_b) ** 2).sum(-1) + ((sigma_a - sigma_b) ** 2).sum(-1)


def metric_features(mu: Tensor, sigma: Tensor, metric: str) -> Tensor:
    """The embedding where `metric` is Euclidean: [mu, sigma] for w2/geodesic, mu for euclidean
    and scalar (a product codebook's nearest codeword on mu is the per-dimension nearest) and
    transform (which codes mu)."""
    check_metric(metric)
    if mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma shapes differ: {tuple(mu.shape)} vs {tuple(sigma.shape)}")
    if metric in ("euclidean", "scalar", "transform"):
        return mu
    return torch.cat([mu, sigma], dim=-1)
