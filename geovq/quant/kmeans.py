"""Lloyd k-means with greedy k-means++ seeding, batched through matrix products.

Used for the `w2` metric on [mu, sigma] (W2 between diagonal Gaussians is Euclidean there, so
the barycenter is the plain mean and Lloyd is exact) and for `euclidean` on mu alone.
The loops run on numpy arrays with single-threaded BLAS: on a small, busy CPU, many small
multi-threaded products lose more at thread barriers than they gain. Hamerly's bounds skip
most distance computations once the centers settle.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from geovq.quant.distances import nearest_center_np

try:  # installed with scikit-learn; without it BLAS keeps its own thread count
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

# Distances to all centers are computed for this many rows at a time (a block stays in cache).
_CHUNK_ROWS = 4096
# Relative error allowed for a float32 |c|^2 - 2 x.c, against |x|^2 + 2 max |c|^2.
_FLOAT32_ROUNDING = 2e-6


@dataclass
class KMeansResult:
    """Centers (K, F); labels (N,) int64 of each point's nearest center; inertia = the sum of
    squared distances to it."""

    centers: Tensor
    labels: Tensor
    inertia: float
    iterations: int


def check_k(k: int, n_points: int) -> None:
    """Raise ValueError unless 1 <= k <= n_points."""
    if not 1 <= k <= n_points:
        raise ValueError(f"k must be between 1 and the number of points ({n_points}), got {k}")


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread for the duration: the products here are small, and BLAS
    threads that spin at barriers cost far more than they save on a small, busy CPU."""
    if threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def kmeans_plus_plus(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Seeds (K, F) for k-means: k distinct rows of `points` chosen by greedy k-means++."""
    x = np.ascontiguousarray(points.detach().cpu().numpy(), dtype=np.float64)
    return points[torch.from_numpy(kmeans_plus_plus_indices(x, k, generator))].clone()


def kmeans_plus_plus_indices(x: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    """Indices (K,) of k distinct rows of the float64 array x (N, F) by greedy k-means++.

    Arthur & Vassilvitskii (2007) D^2 sampling, greedy: each step draws 2 (2 + log k) trials,
    twice scikit-learn's count (cheap here, and lower final inertia on average), and keeps
    the one that lowers the potential most.
    """
    n = len(x)
    check_k(k, n)
    with single_threaded_blas():
        return _kmeans_plus_plus(x, k, generator)


def _kmeans_plus_plus(x: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    n = len(x)
    x_sq = np.einsum("nf,nf->n", x, x)
    x_aug_t = np.ascontiguousarray(_augment(x).T)
    trials = 2 * (2 + int(math.log(k)))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    closest_sq = np.maximum(_sq_distances_from(x, x_aug_t, x_sq, chosen[:1])[0], 0.0)
    for step in range(1, k):
        cumulative = np.cumsum(closest_sq)
        potential = cumulative[-1]
        if potential <= 0:  # every point sits on a chosen center: take any unchosen one
            candidates = np.array([_random_unchosen(n, chosen[:step], generator)])
        else:
            uniform = torch.rand(trials, generator=generator, dtype=torch.float64).numpy()
            # side="right" lands on a point whose interval has positive width: no repeats
            candidates = np.searchsorted(cumulative, uniform * potential, side="right")
            candidates = np.minimum(candidates, n - 1)
        trial_sq = _sq_distances_from(x, x_aug_t, x_sq, candidates)
        np.minimum(trial_sq, closest_sq[None, :], out=trial_sq)
        best = int(trial_sq.sum(1).argmin())
        chosen[step] = candidates[best]
        closest_sq = np.maximum(trial_sq[best], 0.0)
    return chosen


def _sq_distances_from(
    x: np.ndarray, x_aug_t: np.ndarray, x_sq: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    """Squared distances (len(indices), N) from the points `indices` to every point."""
    dist_sq = _augmented_centers(x[indices]).T @ x_aug_t
    dist_sq += x_sq[None, :]
    dist_sq[np.arange(len(indices)), indices] = 0.0
    return dist_sq


def kmeans(
    points: Tensor,
    k: int,
    *,
    restarts: int = 1,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    device: torch.device | str | None = None,
    init: Tensor | None = None,
) -> KMeansResult:
    """Lloyd k-means on (N, F) points; the restart with the lowest inertia wins.

    A restart stops when labels no longer change or the total squared center shift falls
    below `tol` times the mean per-feature variance (scikit-learn's convention). On the CPU
    (device None or "cpu") numpy with Hamerly's bounds; on another device the torch path
    (geovq.quant.kmeans_torch). Centers and labels come back on the CPU. `init` (K, F): one
    run of Lloyd from these centers instead of k-means++ seeding (CPU path).
    """
    if points.ndim != 2:
        raise ValueError(f"kmeans needs (N, F) points, got shape {tuple(points.shape)}")
    check_k(k, points.shape[0])
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if init is not None and tuple(init.shape) != (k, points.shape[1]):
        raise ValueError(f"init must be ({k}, {points.shape[1]}), got {tuple(init.shape)}")
    if device is not None and torch.device(device).type != "cpu":
        from geovq.quant.kmeans_torch import kmeans_torch

        return kmeans_torch(
            points, k, device=device, restarts=restarts, iters=iters, tol=tol, seed=seed
        )
    generator = torch.Generator().manual_seed(seed)
    x = np.asarray(points.detach().cpu().numpy(), dtype=np.float64)
    offset = x.mean(0)
    x = x - offset  # centered data keeps |x|^2 - 2 x.c + |c|^2 accurate
    shift_tol = tol * float(x.var(0).mean())
    best: KMeansResult | None = None
    for _ in range(restarts if init is None else 1):
        with single_threaded_blas():
            if init is None:
                seeds = x[kmeans_plus_plus_indices(x, k, generator)]
            else:
                seeds = init.detach().cpu().numpy().astype(np.float64) - offset
            centers, iterations = _lloyd(x, seeds, iters, shift_tol)
            labels, dist_sq = nearest_center_np(x, centers)
        inertia = float(dist_sq.sum())
        if best is None or inertia < best.inertia:
            centers_t = torch.from_numpy(centers + offset).to(points.dtype)
            best = KMeansResult(centers_t, torch.from_numpy(labels), inertia, iterations)
    assert best is not None
    return best


def _lloyd(
    x: np.ndarray, centers: np.ndarray, iters: int, shift_tol: float
) -> tuple[np.ndarray, int]:
    """Lloyd iterations on x (N, F) from `centers` (K, F); returns the final centers and the
    iterations run. The assignments are those of plain Lloyd."""
    k = len(centers)
    bounds = _HamerlyBounds(x, centers)
    iterations = 0
    while iterations < iters:
        iterations += 1
        new_centers = _cluster_means(x, bounds.labels, k)
        _reseed_empty(new_centers, np.bincount(bounds.labels, minlength=k), x, bounds.upper)
        moved = np.sqrt(((new_centers - centers) ** 2).sum(1))
        centers = new_centers
        changed = bounds.update(centers, moved)
        if not changed or float((moved**2).sum()) <= shift_tol:
            break
    return centers, iterations


class _HamerlyBounds:
    """Labels with Hamerly's bounds (Hamerly 2010, "Making k-means even faster"): an upper
    bound on each point's distance to its own center and a lower bound on its distance to
    every other center. Points whose bounds still separate need no distance computations,
    so late Lloyd iterations touch only a few rows."""

    def __init__(self, x: np.ndarray, centers: np.ndarray):
        self.x = x
        self.x_sq = np.einsum("nf,nf->n", x, x)
        # distances to all centers go through float32 products; bounds allow for their rounding
        self.x_aug32 = _augment(x).astype(np.float32)
        self.labels = np.zeros(len(x), dtype=np.int64)
        self.upper = np.zeros(len(x))  # >= distance to the own center
        self.lower = np.zeros(len(x))  # <= distance to every other center
        self._reassign(centers, np.arange(len(x)))

    def update(self, centers: np.ndarray, moved: np.ndarray) -> bool:
        """Widen the bounds by the centers' moves (K,), re-check the points they no longer
        settle (in place); True if any label changed."""
        self.upper += moved[self.labels]
        self.lower -= _largest_other(moved, self.labels)
        half_gap = 0.5 * _nearest_other_center_distance(centers)
        bound = np.maximum(self.lower, half_gap[self.labels])
        suspect = np.flatnonzero(self.upper > bound)
        if len(suspect) == 0:
            return False
        own = centers[self.labels[suspect]]
        # exact float64 distance to the own center, nudged up past its rounding
        self.upper[suspect] = np.sqrt(((self.x[suspect] - own) ** 2).sum(1)) * (1 + 1e-12)
        suspect = suspect[self.upper[suspect] > bound[suspect]]
        before = self.labels[suspect]
        self._reassign(centers, suspect)
        return bool((self.labels[suspect] != before).any())

    def _reassign(self, centers: np.ndarray, rows: np.ndarray) -> None:
        """Nearest center of `rows` from distances to every center, with fresh bounds."""
        centers_aug32 = _augmented_centers(centers).astype(np.float32)
        centers_sq_max = float(np.einsum("kf,kf->k", centers, centers).max())
        for start in range(0, len(rows), _CHUNK_ROWS):
            chunk = rows[start : start + _CHUNK_ROWS]
            partial = self.x_aug32[chunk] @ centers_aug32  # |c|^2 - 2 x.c
            nearest = partial.argmin(1)
            index = np.arange(len(chunk))
            x_sq = self.x_sq[chunk]
            rounding = _FLOAT32_ROUNDING * (x_sq + 2.0 * centers_sq_max + 1.0)
            self.labels[chunk] = nearest
            self.upper[chunk] = np.sqrt(partial[index, nearest] + x_sq + rounding)
            if len(centers) == 1:
                self.lower[chunk] = np.inf
                continue
            partial[index, nearest] = np.inf
            self.lower[chunk] = np.sqrt(np.maximum(partial.min(1) + x_sq - rounding, 0.0))


def _augment(x: np.ndarray) -> np.ndarray:
    """[x, 1] (N, F + 1), so that one product with _augmented_centers gives |c|^2 - 2 x.c."""
    return np.hstack([x, np.ones((len(x), 1))])


def _augmented_centers(centers: np.ndarray) -> np.ndarray:
    """[-2 c^T; |c|^2] (F + 1, K)."""
    return np.vstack([-2.0 * centers.T, np.einsum("kf,kf->k", centers, centers)[None, :]])


def _nearest_other_center_distance(centers: np.ndarray) -> np.ndarray:
    """Distance (K,) from each center to its nearest other center (inf when K = 1)."""
    if len(centers) == 1:
        return np.full(1, np.inf)
    centers_sq = np.einsum("kf,kf->k", centers, centers)
    dist_sq = centers_sq[:, None] + centers_sq[None, :] - 2.0 * centers @ centers.T
    np.fill_diagonal(dist_sq, np.inf)
    return np.sqrt(np.maximum(dist_sq.min(1), 0.0))


def _largest_other(moved: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per point, the largest move (N,) among the centers other than its own."""
    if len(moved) == 1:
        return np.zeros(len(labels))
    first, second = np.argsort(moved)[::-1][:2]
    return np.where(labels == first, moved[second], moved[first])


def _cluster_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean (K, F) of the rows of each cluster; empty clusters get zeros."""
    counts = np.maximum(np.bincount(labels, minlength=k), 1)
    sums = np.stack([np.bincount(labels, weights=x[:, f], minlength=k) for f in range(x.shape[1])])
    return sums.T / counts[:, None]


def _reseed_empty(centers: np.ndarray, counts: np.ndarray, x: np.ndarray, dist: np.ndarray):
    """Move empty clusters onto the points farthest from their centers (in place)."""
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return
    farthest = np.argpartition(dist, len(dist) - len(empty))[-len(empty) :]
    centers[empty] = x[farthest]


def _random_unchosen(n: int, chosen: np.ndarray, generator: torch.Generator) -> int:
    """One index in range(n) not in `chosen`, uniformly."""
    free = np.ones(n, dtype=bool)
    free[chosen] = False
    free_indices = np.flatnonzero(free)
    return int(free_indices[int(torch.randint(len(free_indices), (1,), generator=generator))])
