"""Lloyd k-means in torch on any device: the GPU path of `geovq.quant.kmeans.kmeans`.

The same algorithm as the numpy path (greedy k-means++ seeding, Lloyd until the labels settle
or the centers stop moving, the best of `restarts`), written for a device where one large
float32 matrix product is cheap and bounds bookkeeping is not: every iteration ranks all
centers for all points, `_block_rows` rows at a time. Float32 is only used to rank; the
final labels re-check near-ties in float64 (`nearest_center_torch`) and the inertia is
float64, so the result is as exact as the numpy path's. Random draws come from a CPU
generator, and cluster sums avoid atomics on the GPU, so a seed gives one result per device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geovq.quant.distances import nearest_center_torch

# Elements (rows x centers) of one float32 distance block: 128 MiB.
_BLOCK_ELEMENTS = 1 << 25
# Rows per one-hot block when summing clusters on a GPU (float64, rows x K).
_ONEHOT_ROWS = 1 << 16


def kmeans_torch(
    points: Tensor,
    k: int,
    *,
    device: torch.device | str,
    restarts: int = 1,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
):
    """Lloyd k-means on (N, F) points on `device`; the result (centers, labels) is on the CPU.

    Arguments and stopping rule as in `geovq.quant.kmeans.kmeans`; the caller checks them.
    """
    from geovq.quant.kmeans import KMeansResult  # the result type lives with the numpy path

    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    x64 = points.detach().to(device=device, dtype=torch.float64)
    offset = x64.mean(0)
    x64 = x64 - offset  # centered data keeps |x|^2 - 2 x.c + |c|^2 accurate in float32
    x = x64.float()
    shift_tol = tol * float(x64.var(0, correction=0).mean())
    best = None
    for _ in range(restarts):
        seeds = x64[kmeans_plus_plus_torch(x, k, generator).to(device)]
        centers, iterations = _lloyd(x, x64, seeds, iters, shift_tol)
        labels, dist_sq = nearest_center_torch(x64, centers)
        inertia = float(dist_sq.sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(
                (centers + offset).to(points.dtype).cpu(), labels.cpu(), inertia, iterations
            )
    return best


def kmeans_plus_plus_torch(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices (K,) on the CPU of k distinct rows of x (N, F) by greedy k-means++.

    Arthur & Vassilvitskii (2007) D^2 sampling with 2 (2 + log k) trials per step, as the
    numpy path; the draws come from the CPU `generator` whatever x's device.
    """
    n = x.shape[0]
    trials = 2 * (2 + int(math.log(k)))
    x_sq = (x * x).sum(1)
    chosen = torch.empty(k, dtype=torch.int64)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    closest_sq = _sq_distances_from(x, x_sq, chosen[:1].to(x.device))[0]
    for step in range(1, k):
        cumulative = closest_sq.double().cumsum(0)
        potential = float(cumulative[-1])
        if potential <= 0:  # every point sits on a chosen center: take any unchosen one
            candidates = _random_unchosen(n, chosen[:step], generator).to(x.device)
        else:
            uniform = torch.rand(trials, generator=generator, dtype=torch.float64)
            # right=True lands on a point whose interval has positive width: no repeats
            targets = (uniform * potential).to(x.device)
            candidates = torch.searchsorted(cumulative, targets, right=True).clamp_max(n - 1)
        trial_sq = torch.minimum(_sq_distances_from(x, x_sq, candidates), closest_sq[None, :])
        best = int(trial_sq.double().sum(1).argmin())
        chosen[step] = int(candidates[best])
        closest_sq = trial_sq[best]
    return chosen


def _sq_distances_from(x: Tensor, x_sq: Tensor, indices: Tensor) -> Tensor:
    """Squared distances (len(indices), N) from the rows `indices` to every row, float32."""
    dist_sq = torch.addmm(x_sq[None, :] + x_sq[indices, None], x[indices], x.T, alpha=-2.0)
    dist_sq.clamp_min_(0.0)
    dist_sq[torch.arange(len(indices), device=x.device), indices] = 0.0
    return dist_sq


def _random_unchosen(n: int, chosen: Tensor, generator: torch.Generator) -> Tensor:
    free = torch.ones(n, dtype=torch.bool)
    free[chosen] = False
    free_indices = free.nonzero().squeeze(1)
    pick = int(torch.randint(len(free_indices), (1,), generator=generator))
    return free_indices[pick : pick + 1]


def _lloyd(
    x: Tensor, x64: Tensor, centers: Tensor, iters: int, shift_tol: float
) -> tuple[Tensor, int]:
    """Lloyd iterations from float64 `centers` (K, F); returns the final centers and the
    iterations run. Points rank centers in float32 (x); means are float64 (x64)."""
    k = centers.shape[0]
    labels, dist_sq = rank_centers(x, centers.float())
    iterations = 0
    while iterations < iters:
        iterations += 1
        sums, counts = cluster_sums(x64, labels, k)
        new_centers = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
        _reseed_empty(new_centers, counts, x64, dist_sq)
        moved_sq = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        new_labels, dist_sq = rank_centers(x, centers.float())
        changed = bool((new_labels != labels).any())
        labels = new_labels
        if not changed or moved_sq <= shift_tol:
            break
    return centers, iterations


def rank_centers(x: Tensor, centers: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest center by float32 distances: labels (N,) int64 and squared distances (N,),
    `_block_rows` rows at a time (the labels may differ from exact ones at near-ties)."""
    centers_sq = (centers * centers).sum(1)
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    dist_sq = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    rows = _block_rows(centers.shape[0])
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        partial = torch.addmm(centers_sq[None, :], block, centers.T, alpha=-2.0)
        values, indices = partial.min(1)
        labels[start : start + rows] = indices
        dist_sq[start : start + rows] = (values + (block * block).sum(1)).clamp_min(0.0)
    return labels, dist_sq


def cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums (K, F) in x's dtype and counts (K,) int64.

    On the CPU a plain index_add; on a GPU one-hot matrix products, because index_add there
    adds with atomics in no fixed order and a seed would no longer fix the result.
    """
    counts = torch.bincount(labels, minlength=k)
    if x.device.type == "cpu":
        return torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x), counts
    return onehot_cluster_sums(x, labels, k), counts


def onehot_cluster_sums(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """Per-cluster sums (K, F) as one-hot (K, rows) @ x (rows, F) products: no atomics."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    clusters = torch.arange(k, device=x.device)
    for start in range(0, x.shape[0], _ONEHOT_ROWS):
        block_labels = labels[start : start + _ONEHOT_ROWS]
        onehot = (clusters[:, None] == block_labels[None, :]).to(x.dtype)
        sums += onehot @ x[start : start + _ONEHOT_ROWS]
    return sums


def _reseed_empty(centers: Tensor, counts: Tensor, x: Tensor, dist_sq: Tensor) -> None:
    """Move empty clusters onto the points farthest from their centers (in place)."""
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty) == 0:
        return
    farthest = dist_sq.topk(len(empty)).indices
    centers[empty] = x[farthest].to(centers.dtype)


def _block_rows(k: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(k, 1))
