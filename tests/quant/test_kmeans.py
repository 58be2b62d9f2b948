"""geovq/quant/kmeans.py against scikit-learn, plain Lloyd and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from geovq.quant.kmeans import _lloyd, kmeans, kmeans_plus_plus


def latent_like_points(n: int, seed: int) -> torch.Tensor:
    """[mu, sigma] (n, 8) of chunk Gaussians: mu from a 12-component mixture in 4 dims,
    sigma in (0.05, 1) depending on the component."""
    rng = np.random.default_rng(seed)
    component = rng.integers(0, 12, n)
    mu = rng.normal(size=(12, 4))[component] * 1.5 + rng.normal(scale=0.5, size=(n, 4))
    log_sigma = rng.normal(-1.0, 0.5, size=(12, 4))[component] + rng.normal(0, 0.3, (n, 4))
    sigma = np.clip(np.exp(log_sigma), 0.05, 1.0)
    return torch.from_numpy(np.hstack([mu, sigma]))


def test_inertia_at_most_sklearn():
    # both land in different local optima (about +-1.5 %), so compare the mean over seeds
    ratios = []
    for seed in range(5):
        points = latent_like_points(2000, seed)
        ours = kmeans(points, 24, restarts=2, seed=seed)
        reference = KMeans(n_clusters=24, n_init=2, random_state=seed).fit(points.numpy())
        ratios.append(ours.inertia / reference.inertia_)
    assert np.mean(ratios) <= 1.01, ratios
    assert max(ratios) <= 1.03, ratios


def test_labels_and_inertia_are_those_of_the_centers():
    points = latent_like_points(1500, 4)
    result = kmeans(points, 16, seed=4)
    dist_sq = torch.cdist(points.double(), result.centers.double()) ** 2
    np.testing.assert_array_equal(result.labels.numpy(), dist_sq.argmin(1).numpy())
    assert result.inertia == pytest.approx(float(dist_sq.min(1).values.sum()), rel=1e-10)


def test_converged_centers_are_their_cluster_means():
    points = latent_like_points(1500, 5)
    result = kmeans(points, 16, tol=0.0, iters=500, seed=5)
    for cluster in range(16):
        members = points[result.labels == cluster].double()
        torch.testing.assert_close(result.centers[cluster].double(), members.mean(0))


def _plain_lloyd(x: np.ndarray, centers: np.ndarray, iters: int) -> np.ndarray:
    """Textbook Lloyd from `centers` until labels stop changing (no empty clusters here)."""
    labels = None
    for _ in range(iters):
        new_labels = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(2).argmin(1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centers = np.stack([x[labels == c].mean(0) for c in range(len(centers))])
    return centers


def test_bounded_lloyd_follows_plain_lloyd():
    x = latent_like_points(1200, 6).numpy()
    x = x - x.mean(0)
    seeds = x[np.random.default_rng(6).choice(len(x), 20, replace=False)]
    ours, _ = _lloyd(x, seeds.copy(), iters=300, shift_tol=0.0)
    np.testing.assert_allclose(ours, _plain_lloyd(x, seeds.copy(), 300), rtol=0, atol=1e-12)


def test_kmeans_plus_plus_picks_distinct_rows_deterministically():
    points = latent_like_points(500, 7)
    seeds = kmeans_plus_plus(points, 30, torch.Generator().manual_seed(7))
    again = kmeans_plus_plus(points, 30, torch.Generator().manual_seed(7))
    assert torch.equal(seeds, again)
    matches = (seeds[:, None, :] == points[None, :, :]).all(2)
    assert matches.any(1).all(), "every seed is a data row"
    assert len({tuple(row.tolist()) for row in seeds}) == 30


def test_duplicate_points_and_k_above_distinct_count():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]).repeat(20, 1)
    result = kmeans(points, 5, seed=0)
    assert result.inertia == pytest.approx(0.0, abs=1e-12)
    assert result.centers.shape == (5, 2)


def test_same_seed_same_result():
    points = latent_like_points(800, 8)
    a, b = kmeans(points, 12, restarts=2, seed=3), kmeans(points, 12, restarts=2, seed=3)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.labels, b.labels)
    assert a.centers.dtype == points.dtype


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"k": 11}, "k must be"),
        ({"k": 2, "restarts": 0}, "restarts"),
        ({"k": 2, "iters": 0}, "iters"),
        ({"k": 2, "tol": -1.0}, "tol"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmeans(torch.zeros(10, 3), **kwargs)


def test_init_runs_lloyd_from_given_centers():
    points = latent_like_points(1500, 9)
    reference = KMeans(n_clusters=12, n_init=1, random_state=0).fit(points.numpy())
    start = torch.from_numpy(reference.cluster_centers_)
    result = kmeans(points, 12, init=start, iters=300, tol=0.0)
    # Lloyd from a converged solution stays there (or improves it)
    assert result.inertia <= reference.inertia_ * (1 + 1e-9)
    with pytest.raises(ValueError, match="init must be"):
        kmeans(points, 11, init=start)
