"""geovq/quant/geodesic.py against dense shortest paths, exhaustive search and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, dijkstra, shortest_path
from scipy.spatial.distance import cdist
from sklearn.neighbors import kneighbors_graph

from geovq.quant.geodesic import (
    assign_geodesic,
    assign_to_medoids,
    connect_components,
    geodesic_kmedoids,
    knn_graph,
    neighbours_torch,
)
from geovq.quant.kmeans import kmeans


def blobs(n: int, seed: int, dim: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(5, dim))
    return centers[rng.integers(0, 5, n)] + rng.normal(size=(n, dim))


def two_spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved 2-D spirals and which spiral each point is on."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(n)) * 3 * np.pi + 0.5
    arm = rng.integers(0, 2, n)
    angle = t + np.pi * arm
    points = np.c_[t * np.cos(angle), t * np.sin(angle)] + rng.normal(scale=0.05, size=(n, 2))
    return points, arm


def purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of points whose cluster's majority class is their own class."""
    majority = sum(np.bincount(truth[labels == c]).max() for c in np.unique(labels))
    return majority / len(truth)


def full_geodesics(points: np.ndarray, knn: int) -> np.ndarray:
    graph, _ = connect_components(knn_graph(points, knn), points)
    return shortest_path(graph, directed=False)


def test_knn_graph_is_the_symmetrised_w2_knn_graph():
    points = blobs(200, 0)
    graph = knn_graph(points, 6)
    reference = kneighbors_graph(points, 6, mode="distance")
    reference = reference.maximum(reference.T)
    assert (graph != graph.T).nnz == 0
    np.testing.assert_array_equal((graph != 0).toarray(), (reference != 0).toarray())
    np.testing.assert_allclose(graph.toarray(), reference.toarray(), rtol=1e-12)
    squared = knn_graph(points, 6, edge_weight="w2sq")
    np.testing.assert_allclose(squared.toarray(), graph.toarray() ** 2, rtol=1e-12)


def test_device_neighbour_search_matches_exact_neighbours():
    # the GPU path (float32 brute force, float64 re-rank), run here on the CPU
    points = blobs(700, 11, dim=8)
    w2, neighbours = neighbours_torch(points, 7, "cpu")
    exact = cdist(points, points)
    np.fill_diagonal(exact, np.inf)
    expected = np.sort(exact, axis=1)[:, :7]
    np.testing.assert_allclose(w2, expected, rtol=1e-12)
    np.testing.assert_allclose(np.take_along_axis(exact, neighbours, 1), expected, rtol=1e-12)
    duplicated = np.repeat(blobs(30, 12), 3, axis=0)
    w2, neighbours = neighbours_torch(duplicated, 2, "cpu")
    assert (neighbours != np.arange(90)[:, None]).all(), "never the point itself"
    assert w2.max() == 0.0, "each point's two twins come first"


def test_coincident_points_keep_their_edges():
    points = np.repeat(blobs(20, 1), 3, axis=0)  # every point three times
    graph = knn_graph(points, 2)
    assert (graph.getnnz(axis=1) >= 2).all()
    assert graph.data.min() > 0, "zero-length edges become tiny, not missing"
    distances = dijkstra(graph, indices=[0])[0]
    assert distances[1] < 1e-9 and distances[2] < 1e-9


def test_disconnected_graph_gets_connected_by_closest_pairs():
    rng = np.random.default_rng(2)
    sizes, offsets = (40, 30, 20), ([0, 0], [40, 0], [0, 90])
    groups = [rng.normal(size=(n, 2)) + offset for n, offset in zip(sizes, offsets, strict=True)]
    points = np.vstack(groups)
    graph = knn_graph(points, 4)
    assert connected_components(graph, directed=False)[0] == 3
    joined_graph, joined = connect_components(graph, points)
    assert joined == 2
    assert connected_components(joined_graph, directed=False)[0] == 1
    bridges = joined_graph - graph
    bridge_lengths = np.sort(bridges.data)
    expected = [cdist(groups[0], groups[i]).min() for i in (1, 2)]  # each to the largest
    np.testing.assert_allclose(bridge_lengths, np.repeat(np.sort(expected), 2))
    assert geodesic_kmedoids(points, 3, knn=4).components_joined == 2


def test_multi_source_dijkstra_equals_dense_shortest_paths():
    points = blobs(150, 3)
    graph, _ = connect_components(knn_graph(points, 5), points)
    medoids = np.array([3, 40, 77, 120])
    labels, distances = assign_to_medoids(graph, medoids)
    dense = shortest_path(graph.toarray(), directed=False)[:, medoids]
    np.testing.assert_allclose(distances, dense.min(1), rtol=1e-12)
    np.testing.assert_array_equal(labels, dense.argmin(1))


def test_fit_distances_are_geodesic_distances_to_the_own_medoid():
    points = blobs(200, 4)
    fit = geodesic_kmedoids(points, 6, knn=6, seed=4)
    dense = full_geodesics(points, 6)[:, fit.medoids]
    np.testing.assert_allclose(fit.distances, dense[np.arange(200), fit.labels], rtol=1e-12)
    np.testing.assert_allclose(fit.distances, dense.min(1), rtol=1e-12)
    assert fit.objective == pytest.approx(fit.distances.sum())
    np.testing.assert_array_equal(fit.labels[fit.medoids], np.arange(6))


def test_objective_close_to_exhaustive_search_on_tiny_data():
    ratios, ratios_restarts = [], []
    for seed in range(8):
        points = np.random.default_rng(seed).normal(size=(12, 3))
        dense = full_geodesics(points, 4)
        optimum = min(dense[:, list(m)].min(1).sum() for m in itertools.combinations(range(12), 3))
        ratios.append(geodesic_kmedoids(points, 3, knn=4, seed=seed).objective / optimum)
        fit = geodesic_kmedoids(points, 3, knn=4, seed=seed, restarts=5)
        ratios_restarts.append(fit.objective / optimum)
    assert min(ratios) >= 1 - 1e-12
    # alternate k-medoids stops in local optima; restarts pick the best of several
    assert np.mean(ratios) <= 1.06, ratios
    assert max(ratios_restarts) <= 1.05, ratios_restarts


def test_geodesic_medoids_separate_spirals_that_euclidean_kmeans_mixes():
    geodesic_purity, euclidean_purity = [], []
    for seed in range(3):
        points, arm = two_spirals(600, seed)
        fit = geodesic_kmedoids(points, 8, knn=8, seed=seed)
        geodesic_purity.append(purity(fit.labels, arm))
        labels = kmeans(torch.from_numpy(points), 8, seed=seed).labels.numpy()
        euclidean_purity.append(purity(labels, arm))
    assert np.mean(geodesic_purity) >= 0.95, geodesic_purity
    assert np.mean(geodesic_purity) >= np.mean(euclidean_purity) + 0.25, euclidean_purity


def test_assign_geodesic_is_exact_on_the_graph_with_the_new_point():
    points = blobs(300, 5)
    fit = geodesic_kmedoids(points, 5, knn=6, seed=5)
    graph, _ = connect_components(knn_graph(points, 6), points)
    new_points = blobs(12, 6)
    labels = assign_geodesic(fit, new_points, knn=6)
    for p, label in zip(new_points, labels, strict=True):
        w2 = np.linalg.norm(points - p, axis=1)
        nearest = np.argsort(w2)[:6]
        n = len(points)
        edges = sp.csr_matrix((w2[nearest], (np.full(6, n), nearest)), shape=(n + 1, n + 1))
        augmented = sp.bmat([[graph, None], [None, sp.csr_matrix((1, 1))]]).tocsr() + edges
        augmented = augmented.maximum(augmented.T)
        to_medoids = dijkstra(augmented, indices=fit.medoids)[:, n]
        assert label == to_medoids.argmin()


def test_assign_w2_mode_is_the_nearest_medoid():
    points = blobs(300, 7)
    fit = geodesic_kmedoids(points, 5, knn=6, seed=7)
    new_points = blobs(50, 8)
    labels = assign_geodesic(fit, new_points, knn=6, mode="w2")
    np.testing.assert_array_equal(labels, cdist(new_points, points[fit.medoids]).argmin(1))


def test_fit_points_reassigned_keep_their_labels():
    points = blobs(300, 9)
    fit = geodesic_kmedoids(points, 6, knn=6, seed=9)
    np.testing.assert_array_equal(assign_geodesic(fit, points, knn=6), fit.labels)


def test_same_seed_same_fit():
    points = blobs(300, 10)
    a = geodesic_kmedoids(points, 7, knn=5, seed=1)
    b = geodesic_kmedoids(points, 7, knn=5, seed=1)
    np.testing.assert_array_equal(a.medoids, b.medoids)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_large_cells_score_a_sample_of_candidates():
    points = blobs(2000, 11)
    fit = geodesic_kmedoids(points, 4, knn=8, candidates=4, seed=11)
    dense = full_geodesics(points, 8)
    # each medoid beats most members of its cell as a centre of that cell
    for cell, medoid in enumerate(fit.medoids):
        members = np.flatnonzero(fit.labels == cell)
        sums = dense[np.ix_(members, members)].sum(1)
        own = dense[medoid, members].sum()
        assert (sums < own).mean() < 0.05


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"k": 31}, "k must be"),
        ({"k": 2, "knn": 0}, "knn must be"),
        ({"k": 2, "knn": 30}, "knn must be"),
        ({"k": 2, "edge_weight": "w1"}, "edge_weight"),
        ({"k": 2, "candidates": 0}, "candidates"),
        ({"k": 2, "restarts": 0}, "restarts"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        geodesic_kmedoids(blobs(30, 0), **kwargs)


def test_bad_assign_arguments_raise():
    fit = geodesic_kmedoids(blobs(30, 0), 2, knn=3)
    with pytest.raises(ValueError, match="assign mode"):
        assign_geodesic(fit, blobs(5, 1), knn=3, mode="euclidean")
    with pytest.raises(ValueError, match="knn"):
        assign_geodesic(fit, blobs(5, 1), knn=0)
    with pytest.raises(ValueError, match="features"):
        assign_geodesic(fit, np.zeros((5, 2)), knn=3)
