"""geovq/quant/kmeans_torch.py (the GPU path, run here on the CPU) against the numpy path,
scikit-learn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from geovq.quant.kmeans import kmeans
from geovq.quant.kmeans_torch import cluster_sums, kmeans_torch, onehot_cluster_sums
from tests.quant.test_kmeans import latent_like_points


def test_same_objective_as_the_numpy_path():
    ratios = []
    for seed in range(3):
        points = latent_like_points(3000, seed).float()
        ours = kmeans_torch(points, 32, device="cpu", seed=seed)
        numpy_path = kmeans(points, 32, seed=seed)
        ratios.append(ours.inertia / numpy_path.inertia)
    assert abs(np.mean(ratios) - 1) <= 0.01, ratios


def test_inertia_at_most_sklearn():
    ratios = []
    for seed in range(3):
        points = latent_like_points(2000, seed)
        ours = kmeans_torch(points, 24, device="cpu", restarts=2, seed=seed)
        reference = KMeans(n_clusters=24, n_init=2, random_state=seed).fit(points.numpy())
        ratios.append(ours.inertia / reference.inertia_)
    assert np.mean(ratios) <= 1.01, ratios
    assert max(ratios) <= 1.03, ratios


def test_labels_are_the_brute_force_nearest_centers():
    points = latent_like_points(2500, 4)
    result = kmeans_torch(points, 16, device="cpu", seed=4)
    dist_sq = ((points.double()[:, None, :] - result.centers.double()[None]) ** 2).sum(2)
    np.testing.assert_array_equal(result.labels.numpy(), dist_sq.argmin(1).numpy())
    assert result.inertia == pytest.approx(float(dist_sq.min(1).values.sum()), rel=1e-10)
    assert result.centers.dtype == points.dtype and result.centers.device.type == "cpu"


def test_converged_centers_are_their_cluster_means():
    points = latent_like_points(1500, 5)
    result = kmeans_torch(points, 16, device="cpu", tol=0.0, iters=500, seed=5)
    for cluster in range(16):
        members = points[result.labels == cluster].double()
        torch.testing.assert_close(result.centers[cluster].double(), members.mean(0))


def test_gpu_cluster_sums_equal_index_add():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(70_000, 5, generator=g, dtype=torch.float64)  # more than one block
    labels = torch.randint(0, 9, (70_000,), generator=g)
    sums, counts = cluster_sums(x, labels, 9)
    torch.testing.assert_close(onehot_cluster_sums(x, labels, 9), sums, rtol=1e-12, atol=1e-9)
    assert torch.equal(counts, torch.bincount(labels, minlength=9))


def test_duplicates_seed_and_same_seed_same_result():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]).repeat(20, 1)
    assert kmeans_torch(points, 5, device="cpu").inertia == pytest.approx(0.0, abs=1e-12)
    points = latent_like_points(800, 8)
    a = kmeans_torch(points, 12, device="cpu", restarts=2, seed=3)
    b = kmeans_torch(points, 12, device="cpu", restarts=2, seed=3)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.labels, b.labels)
