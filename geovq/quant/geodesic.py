"""Geodesic k-medoids on a k-nearest-neighbour graph of chunk Gaussians.

Each point joins its `knn` nearest neighbours in W2 (Euclidean on [mu, sigma]) by an edge of
length W2, or W2^2 with edge_weight="w2sq" (the old reference's choice); geodesic distance is
the shortest path on that graph (Tenenbaum et al. 2000, Isomap). k-medoids alternates, as in
Park & Jun (2009): assign every point to its nearest medoid with ONE multi-source Dijkstra, then
move each medoid to the candidate member with the least sum of geodesic distances inside its
cell. Nothing is N x N: the graph has O(N knn) edges and each medoid update works on one cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from geovq.quant.distances import nearest_center_np
from geovq.quant.kmeans import check_k, kmeans_plus_plus_indices

EDGE_WEIGHTS = ("w2", "w2sq")
ASSIGN_MODES = ("geodesic", "w2")

# csgraph reads an explicit zero as "no edge", so coincident points get this length instead.
_MIN_EDGE_LENGTH = 1e-12
# k-means++ seeding runs on a random sample of this many points per medoid (at most).
_SEED_SAMPLE_PER_MEDOID = 64
# Float32 neighbour search on a device keeps this many spare candidates per point, then ranks
# knn + spare by exact float64 distances (float32 may misorder near-ties, not lose neighbours).
_SPARE_NEIGHBOURS = 4
# Elements (rows x points) of one float32 distance block in the device neighbour search: 1 GiB.
_NEIGHBOUR_BLOCK_ELEMENTS = 1 << 28
# A candidate replaces the medoid only if it lowers the cell's sum by more than this (relative).
_IMPROVEMENT_RTOL = 1e-12


@dataclass
class GeodesicFit:
    """Medoids (K,) as indices into `points`; labels (N,) in 0..K-1; distances (N,) geodesic
    to the own medoid; objective = sum of distances. `points` (N, F) and their KD-tree stay for
    assigning new points."""

    medoids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray
    objective: float
    components_joined: int
    iterations: int
    edge_weight: str
    points: np.ndarray = field(repr=False)
    tree: cKDTree = field(repr=False)


def check_knn(knn: int, n_points: int) -> None:
    """Raise ValueError unless 1 <= knn < n_points."""
    if not 1 <= knn < n_points:
        raise ValueError(
            f"knn must be between 1 and the number of points - 1 ({n_points - 1}), got {knn}"
        )


def check_edge_weight(edge_weight: str) -> None:
    """Raise ValueError unless `edge_weight` is one of EDGE_WEIGHTS."""
    if edge_weight not in EDGE_WEIGHTS:
        raise ValueError(
            f"unknown edge_weight {edge_weight!r}: choose one of {', '.join(EDGE_WEIGHTS)}"
        )


def edge_lengths(w2: np.ndarray, edge_weight: str) -> np.ndarray:
    """Edge lengths from W2 distances: W2 or W2^2, never exactly zero."""
    check_edge_weight(edge_weight)
    lengths = w2 if edge_weight == "w2" else w2 * w2
    return np.where(lengths > 0, lengths, _MIN_EDGE_LENGTH)


def knn_graph(
    points: np.ndarray, knn: int, edge_weight: str = "w2", device: torch.device | None = None
) -> sp.csr_matrix:
    """Symmetric kNN graph (N, N) of the rows of `points` (N, F): i and j are joined when
    either is among the other's `knn` nearest neighbours. A non-CPU `device` searches the
    neighbours there (neighbours_torch) instead of in a KD-tree."""
    points = _as_points(points)
    check_knn(knn, len(points))
    check_edge_weight(edge_weight)
    return _knn_graph(cKDTree(points), points, knn, edge_weight, device)


def _knn_graph(
    tree: cKDTree,
    points: np.ndarray,
    knn: int,
    edge_weight: str,
    device: torch.device | str | None = None,
) -> sp.csr_matrix:
    n = len(points)
    if device is not None and torch.device(device).type != "cpu":
        w2, neighbours = neighbours_torch(points, knn, device)
    else:
        w2, neighbours = _neighbours_of_points(tree, points, knn)
    indptr = np.arange(0, n * knn + 1, knn)
    directed = sp.csr_matrix(
        (edge_lengths(w2, edge_weight).ravel(), neighbours.ravel(), indptr), shape=(n, n)
    )
    return directed.maximum(directed.T).tocsr()


def _neighbours_of_points(
    tree: cKDTree, points: np.ndarray, knn: int
) -> tuple[np.ndarray, np.ndarray]:
    """W2 distances (N, knn) and indices (N, knn) of each point's nearest other points."""
    n = len(points)
    # querying in the tree's leaf order lets neighbouring queries share cache: ~3x faster
    order = tree.indices
    w2_sorted, index_sorted = tree.query(points[order], k=knn + 1, workers=-1)
    w2 = np.empty_like(w2_sorted)
    index = np.empty_like(index_sorted)
    w2[order] = w2_sorted
    index[order] = index_sorted
    # drop the point itself; among coincident points it may not come first, or at all
    is_self = index == np.arange(n)[:, None]
    is_self[~is_self.any(1), -1] = True
    keep = ~is_self
    return w2[keep].reshape(n, knn), index[keep].reshape(n, knn)


def neighbours_torch(
    points: np.ndarray, knn: int, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray]:
    """W2 distances (N, knn) float64 and indices (N, knn) of each point's nearest other points,
    by brute force on `device` (any): float32 distances to every point, a block of rows at a
    time, keep knn + spare candidates, then rank those by exact float64 differences."""
    x64 = torch.from_numpy(points).to(device)
    x = x64.float()
    n = x.shape[0]
    keep = min(knn + _SPARE_NEIGHBOURS, n - 1)
    x_sq = (x * x).sum(1)
    w2 = np.empty((n, knn))
    neighbours = np.empty((n, knn), dtype=np.int64)
    rows = max(1, _NEIGHBOUR_BLOCK_ELEMENTS // n)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block_sq = torch.addmm(
            x_sq[None, :] + x_sq[start:stop, None], x[start:stop], x.T, alpha=-2.0
        )
        own = torch.arange(start, stop, device=x.device)
        block_sq[own - start, own] = torch.inf  # never the point itself
        candidates = block_sq.topk(keep, dim=1, largest=False).indices
        exact_sq = ((x64[candidates] - x64[start:stop, None, :]) ** 2).sum(2)
        # stable order: equal distances (coincident points) keep the lower index first
        exact_sq, order = torch.sort(exact_sq, dim=1, stable=True)
        w2[start:stop] = exact_sq[:, :knn].sqrt().cpu().numpy()
        neighbours[start:stop] = candidates.gather(1, order[:, :knn]).cpu().numpy()
    return w2, neighbours


def connect_components(
    graph: sp.csr_matrix, points: np.ndarray, edge_weight: str = "w2"
) -> tuple[sp.csr_matrix, int]:
    """Join every connected component to the largest one by its closest pair of points.

    Returns the connected graph and the number of components joined (0 if it was connected).
    """
    points = _as_points(points)
    check_edge_weight(edge_weight)
    n_components, component = connected_components(graph, directed=False)
    if n_components == 1:
        return sp.csr_matrix(graph), 0
    largest = np.bincount(component).argmax()
    inside = np.flatnonzero(component == largest)
    outside = np.flatnonzero(component != largest)
    w2, nearest = cKDTree(points[inside]).query(points[outside], k=1, workers=-1)
    # per outside component, its point closest to the largest one
    by_component = np.lexsort((w2, component[outside]))
    first = np.r_[True, np.diff(component[outside][by_component]) != 0]
    closest = by_component[first]
    sources, targets = outside[closest], inside[nearest[closest]]
    lengths = edge_lengths(w2[closest], edge_weight)
    bridges = sp.csr_matrix(
        (np.r_[lengths, lengths], (np.r_[sources, targets], np.r_[targets, sources])),
        shape=graph.shape,
    )
    return (sp.csr_matrix(graph) + bridges).tocsr(), n_components - 1


def geodesic_kmedoids(
    points: np.ndarray,
    k: int,
    *,
    knn: int = 10,
    edge_weight: str = "w2",
    iters: int = 20,
    candidates: int = 16,
    seed: int = 0,
    tol: float = 1e-4,
    restarts: int = 1,
    device: torch.device | str | None = None,
) -> GeodesicFit:
    """k-medoids of the rows of `points` (N, F) under geodesic distance on their kNN graph.

    Seeds by k-means++ in the W2 embedding (on a sample), then alternates assignment and
    medoid update until the medoids stop changing, an update lowers the objective by no more
    than `tol` (relative), or `iters` updates ran. A cell's update scores `candidates` members
    (half nearest its mean, half at random) and the current medoid; cells no larger than that
    score every member, which makes it exact alternate k-medoids. With restarts > 1 the
    seeding and alternation repeat on the same graph and the lowest objective wins. A
    non-CPU `device` searches the graph's neighbours there; Dijkstra stays on the CPU.
    """
    points = _as_points(points)
    n = len(points)
    check_k(k, n)
    check_knn(knn, n)
    check_edge_weight(edge_weight)
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    rng = np.random.default_rng(seed)
    tree = cKDTree(points)
    graph = _knn_graph(tree, points, knn, edge_weight, device)
    graph, joined = connect_components(graph, points, edge_weight)
    best: _Alternation | None = None
    for _ in range(restarts):
        run = _alternate(graph, points, k, iters, candidates, tol, rng)
        if best is None or run.objective < best.objective:
            best = run
    assert best is not None
    return GeodesicFit(
        medoids=best.medoids,
        labels=best.labels,
        distances=best.distances,
        objective=best.objective,
        components_joined=joined,
        iterations=best.iterations,
        edge_weight=edge_weight,
        points=points,
        tree=tree,
    )


def fit_from_medoids(
    points: np.ndarray, medoids: np.ndarray, *, knn: int = 10, edge_weight: str = "w2"
) -> GeodesicFit:
    """The fit state for known medoids (K,) of `points` (N, F): the same kNN graph that
    geodesic_kmedoids builds, and every point's nearest medoid on it, so `assign_geodesic`
    places new points as the original fit would, without refitting."""
    points = _as_points(points)
    check_knn(knn, len(points))
    check_edge_weight(edge_weight)
    tree = cKDTree(points)
    graph, joined = connect_components(
        _knn_graph(tree, points, knn, edge_weight), points, edge_weight
    )
    medoids = np.asarray(medoids, dtype=np.int64)
    labels, distances = assign_to_medoids(graph, medoids)
    return GeodesicFit(
        medoids=medoids,
        labels=labels,
        distances=distances,
        objective=float(distances.sum()),
        components_joined=joined,
        iterations=0,
        edge_weight=edge_weight,
        points=points,
        tree=tree,
    )


@dataclass
class _Alternation:
    medoids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray
    objective: float
    iterations: int


def _alternate(
    graph: sp.csr_matrix,
    points: np.ndarray,
    k: int,
    iters: int,
    candidates: int,
    tol: float,
    rng: np.random.Generator,
) -> _Alternation:
    """One seeding and its assignment / medoid-update alternation."""
    medoids = _seed_medoids(points, k, rng)
    labels, distances = assign_to_medoids(graph, medoids)
    objective = float(distances.sum())
    iterations = 0
    while iterations < iters:
        iterations += 1
        updated = _update_medoids(graph, points, medoids, labels, candidates, rng)
        if np.array_equal(updated, medoids):
            break
        medoids = updated
        labels, distances = assign_to_medoids(graph, medoids)
        # the objective never rises: each cell's new medoid reaches its cell no farther
        previous, objective = objective, float(distances.sum())
        if previous - objective <= tol * previous:
            break
    return _Alternation(medoids, labels, distances, objective, iterations)


def assign_to_medoids(graph: sp.csr_matrix, medoids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) = position in `medoids` of the nearest medoid, and the geodesic distance (N,)
    to it, by one multi-source Dijkstra. Unreachable nodes get label -1 and distance inf."""
    distances, _, sources = dijkstra(
        graph, directed=True, indices=medoids, min_only=True, return_predecessors=True
    )
    position = np.empty(graph.shape[0], dtype=np.int64)
    position[medoids] = np.arange(len(medoids))
    labels = np.full(graph.shape[0], -1, dtype=np.int64)
    reached = sources >= 0
    labels[reached] = position[sources[reached]]
    return labels, distances


def _seed_medoids(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct point indices by k-means++ in the W2 embedding, on a random sample."""
    n = len(points)
    sample_size = min(n, max(k, _SEED_SAMPLE_PER_MEDOID * k))
    sample = np.sort(rng.choice(n, size=sample_size, replace=False))
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return sample[kmeans_plus_plus_indices(points[sample], k, generator)]


def _update_medoids(
    graph: sp.csr_matrix,
    points: np.ndarray,
    medoids: np.ndarray,
    labels: np.ndarray,
    candidates: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """New medoids (K,): in each cell, the scored member with the least sum of geodesic
    distances to the cell's members on the cell's own subgraph (the current medoid on ties)."""
    cells = _cell_blocks(graph, labels, len(medoids))
    updated = medoids.copy()
    for cell, (members, block) in enumerate(cells):
        local_medoid = int(np.flatnonzero(members == medoids[cell])[0])
        scored = _candidates(points[members], local_medoid, candidates, rng)
        best = _least_total_distance(block, scored)
        updated[cell] = members[scored[best]]
    return updated


def _cell_blocks(graph: sp.csr_matrix, labels: np.ndarray, k: int):
    """Per cell: its members (M,) and the subgraph (M, M) of the edges inside the cell."""
    order = np.argsort(labels, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    starts = np.r_[0, np.cumsum(np.bincount(labels, minlength=k))]
    coo = graph.tocoo()
    inside = labels[coo.row] == labels[coo.col]
    grouped = sp.csr_matrix(  # rows and columns renumbered so that each cell is one block
        (coo.data[inside], (position[coo.row[inside]], position[coo.col[inside]])),
        shape=graph.shape,
    )
    for start, stop in zip(starts[:-1], starts[1:], strict=True):
        first, last = grouped.indptr[start], grouped.indptr[stop]
        block = sp.csr_matrix(
            (
                grouped.data[first:last],
                grouped.indices[first:last] - start,
                grouped.indptr[start : stop + 1] - first,
            ),
            shape=(stop - start, stop - start),
        )
        yield order[start:stop], block


def _candidates(
    member_points: np.ndarray, local_medoid: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Local indices to score, the current medoid first: all members of a small cell, else
    the count // 2 members nearest the cell's mean and the rest drawn at random."""
    m = len(member_points)
    others = np.delete(np.arange(m), local_medoid)
    if m <= count + 1:
        return np.r_[local_medoid, others]
    n_near = count // 2
    to_mean = ((member_points[others] - member_points.mean(0)) ** 2).sum(1)
    near_order = np.argpartition(to_mean, n_near)
    near, rest = others[near_order[:n_near]], others[near_order[n_near:]]
    drawn = rng.choice(rest, size=count - n_near, replace=False)
    return np.r_[local_medoid, near, drawn]


def _least_total_distance(block: sp.csr_matrix, scored: np.ndarray) -> int:
    """Position in `scored` of the node with the least sum of shortest paths to every node of
    `block`; nodes it cannot reach count first (fewest wins), position 0 wins ties."""
    distances = dijkstra(block, directed=True, indices=scored)
    unreachable = np.isinf(distances)
    missed = unreachable.sum(1)
    totals = np.where(unreachable, 0.0, distances).sum(1)
    best = int(np.lexsort((totals, missed))[0])
    if missed[best] == missed[0] and totals[best] >= totals[0] * (1 - _IMPROVEMENT_RTOL):
        return 0
    return best


def assign_geodesic(
    fit: GeodesicFit, new_points: np.ndarray, knn: int, mode: str = "geodesic"
) -> np.ndarray:
    """Labels (M,) of new points (M, F) given a fit.

    mode="geodesic": the nearest medoid on the fit graph with the new point added, linked to
    its `knn` nearest fit points n: min over n of edge(p, n) + distance(n, own medoid), which
    is exact for that augmented graph. mode="w2": the nearest medoid in direct W2.
    """
    if mode not in ASSIGN_MODES:
        raise ValueError(f"unknown assign mode {mode!r}: choose one of {', '.join(ASSIGN_MODES)}")
    new_points = _as_points(new_points)
    if new_points.shape[1] != fit.points.shape[1]:
        raise ValueError(
            f"new points have {new_points.shape[1]} features, the fit has {fit.points.shape[1]}"
        )
    if mode == "w2":
        return nearest_center_np(new_points, fit.points[fit.medoids])[0]
    if not 1 <= knn <= len(fit.points):
        raise ValueError(f"knn must be between 1 and the number of fit points, got {knn}")
    w2, neighbours = fit.tree.query(new_points, k=knn, workers=-1)
    w2, neighbours = w2.reshape(len(new_points), knn), neighbours.reshape(len(new_points), knn)
    through = edge_lengths(w2, fit.edge_weight) + fit.distances[neighbours]
    best = through.argmin(1)
    return fit.labels[neighbours[np.arange(len(new_points)), best]]


def _as_points(points: np.ndarray) -> np.ndarray:
    points = np.ascontiguousarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must be (N, F), got shape {points.shape}")
    return points
