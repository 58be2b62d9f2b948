"""Post-hoc scalar quantization: one Lloyd–Max quantizer per latent dimension (Lloyd 1982,
"Least squares quantization in PCM"; Max 1960), the a-posteriori analogue of FSQ.

Dimension c of every chunk gets ``levels[c]`` reconstruction values, fitted by 1-d k-means on
that dimension's mu over all chunks. The product of the C scalar quantizers is an implicit
codebook of ∏ levels codewords, and a chunk's code packs its C level indices mixed-radix
(dimension 0 the fastest digit), as FSQ does. The nearest product codeword in Euclidean
distance on mu is the per-dimension nearest level, so the usual codeword search assigns codes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# The 1-d optimum is found exactly on this many equal-count bins of the sorted values (exact
# when there are no more distinct values than this), then polished by Lloyd on every value.
DP_BINS = 1024
LLOYD_ITERS = 50


def lloyd_max_1d(values: Tensor, levels: int) -> Tensor:
    """The ``levels`` reconstruction values (sorted, float64) minimising the squared error of
    quantizing ``values`` (M,) to its nearest one.

    Optimal 1-d clusters are contiguous in sorted order, so a dynamic program over cut points
    (Wang & Song 2011, "Ckmeans.1d.dp") finds the global optimum on binned values; Lloyd
    iterations on the raw values then polish it (they never increase the error).
    """
    x = np.sort(values.detach().cpu().double().numpy().ravel())
    if x.size == 0:
        raise ValueError("lloyd_max_1d needs at least one value")
    counts, sums, sq_sums = _bins(x)
    levels_used = min(levels, len(counts))
    centers = _optimal_partition_means(counts, sums, sq_sums, levels_used)
    centers = _lloyd(x, centers)
    if levels_used < levels:  # fewer distinct values than levels: repeat the top value
        centers = np.concatenate([centers, np.full(levels - levels_used, centers[-1])])
    return torch.from_numpy(centers)


def _bins(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum, sum of squares) per bin of sorted x: its distinct values, or DP_BINS
    equal-count groups when there are more."""
    distinct, first, counts = np.unique(x, return_index=True, return_counts=True)
    if len(distinct) > DP_BINS:
        edges = np.linspace(0, len(x), DP_BINS + 1).round().astype(np.int64)
        first, counts = edges[:-1], np.diff(edges)
    sums = np.add.reduceat(x, first)
    sq_sums = np.add.reduceat(x * x, first)
    return counts.astype(np.float64), sums, sq_sums


def _optimal_partition_means(
    counts: np.ndarray, sums: np.ndarray, sq_sums: np.ndarray, parts: int
) -> np.ndarray:
    """Means of the partition of the bins into ``parts`` contiguous runs with the least SSE."""
    n = len(counts)
    cum_n = np.concatenate([[0.0], np.cumsum(counts)])
    cum_s = np.concatenate([[0.0], np.cumsum(sums)])
    cum_q = np.concatenate([[0.0], np.cumsum(sq_sums)])
    # cost[i, j]: SSE of bins i .. j-1 as one cluster (i < j); inf elsewhere
    count_ij = cum_n[None, :] - cum_n[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sum_ij = cum_s[None, :] - cum_s[:, None]
        cost = (cum_q[None, :] - cum_q[:, None]) - sum_ij**2 / count_ij
    cost = np.where(count_ij > 0, np.maximum(cost, 0.0), np.inf)
    best = cost[0].copy()  # best[j]: least SSE of bins 0 .. j-1 in one cluster
    cuts = np.zeros((parts, n + 1), dtype=np.int64)
    for part in range(1, parts):
        total = best[:, None] + cost  # split at i: first `part` clusters on 0..i-1, one on i..j-1
        cuts[part] = total.argmin(0)
        best = total[cuts[part], np.arange(n + 1)]
    bounds = [n]
    for part in range(parts - 1, 0, -1):
        bounds.append(int(cuts[part, bounds[-1]]))
    bounds.append(0)
    bounds.reverse()
    starts, stops = np.array(bounds[:-1]), np.array(bounds[1:])
    return (cum_s[stops] - cum_s[starts]) / (cum_n[stops] - cum_n[starts])


def _lloyd(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Lloyd–Max on sorted x from sorted centers: cells between midpoints, centers = cell means."""
    for _ in range(LLOYD_ITERS):
        cells = np.searchsorted(x, (centers[1:] + centers[:-1]) / 2)
        edges = np.concatenate([[0], cells, [len(x)]])
        sums = np.add.reduceat(np.concatenate([x, [0.0]]), edges[:-1])
        counts = np.diff(edges)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
        moved[counts == 0] = centers[counts == 0]
        if np.allclose(moved, centers, rtol=0, atol=1e-12):
            return moved
        centers = np.sort(moved)
    return centers


def nearest_level(values: Tensor, levels: Tensor) -> Tensor:
    """Index (M,) of the nearest of the sorted levels (L,) to each value (ties go lower)."""
    return torch.bucketize(values, (levels[1:] + levels[:-1]) / 2)


def scalar_level_indices(values: Tensor, centers: list[Tensor]) -> Tensor:
    """(M, C) values -> (M, C) int64 index of the nearest of dimension c's sorted levels."""
    columns = [
        nearest_level(values[:, dim].detach().cpu().double(), levels)
        for dim, levels in enumerate(centers)
    ]
    return torch.stack(columns, dim=1)


def pack_codes(indices: Tensor, levels: tuple[int, ...]) -> Tensor:
    """(M, C) level indices -> (M,) int64 mixed-radix codes (dimension 0 the fastest digit)."""
    basis = torch.tensor([math.prod(levels[:dim]) for dim in range(len(levels))])
    return (indices.to(torch.int64) * basis).sum(1)


def product_codebook(centers: list[Tensor]) -> Tensor:
    """(∏ levels, C) every combination of the per-dimension levels, row = packed code."""
    levels = tuple(len(c) for c in centers)
    codes = torch.arange(math.prod(levels))
    columns = [
        centers[dim][(codes // math.prod(levels[:dim])) % levels[dim]] for dim in range(len(levels))
    ]
    return torch.stack(columns, dim=1)
