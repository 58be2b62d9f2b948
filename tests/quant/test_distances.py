"""geovq/quant/distances.py against direct float64 computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geovq.quant.distances import (
    metric_features,
    nearest_center,
    nearest_center_torch,
    sq_distances,
    w2_sq,
)


def _brute_nearest(x: torch.Tensor, centers: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center by explicit float64 differences (no matrix-product shortcut)."""
    diff = x.double()[:, None, :] - centers.double()[None, :, :]
    dist_sq = (diff**2).sum(2).numpy()
    return dist_sq.argmin(1), dist_sq.min(1)


def test_sq_distances_match_cdist():
    g = torch.Generator().manual_seed(0)
    x, centers = torch.randn(50, 6, generator=g), torch.randn(7, 6, generator=g)
    expected = torch.cdist(x.double(), centers.double()) ** 2
    torch.testing.assert_close(sq_distances(x.double(), centers.double()), expected)


@pytest.mark.parametrize("chunk_rows", [1, 7, 32768])
def test_nearest_center_matches_brute_force(chunk_rows):
    g = torch.Generator().manual_seed(1)
    x, centers = torch.randn(300, 8, generator=g), torch.randn(40, 8, generator=g)
    labels, dist_sq = nearest_center(x, centers, chunk_rows=chunk_rows)
    expected_labels, expected_sq = _brute_nearest(x, centers)
    assert labels.dtype == torch.int64 and labels.shape == (300,)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    np.testing.assert_allclose(dist_sq.numpy(), expected_sq, rtol=1e-12, atol=1e-12)


def test_nearest_center_settles_near_ties_like_brute_force():
    # far from the origin, |x|^2 - 2 x.c + |c|^2 loses the tiny gap between two centers
    offset = 1e5
    centers = torch.tensor([[offset + 1.0, 0.0], [offset - 1.0, 0.0]], dtype=torch.float64)
    gaps = torch.linspace(-1e-7, 1e-7, 41, dtype=torch.float64)
    x = torch.stack([offset + gaps, torch.ones_like(gaps)], dim=1)
    labels, _ = nearest_center(x, centers)
    expected_labels, _ = _brute_nearest(x, centers)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)


def test_torch_path_matches_brute_force_on_cpu():
    # the GPU path (float32 ranking, float64 re-check), run here on the CPU
    g = torch.Generator().manual_seed(4)
    x, centers = torch.randn(3000, 8, generator=g).double(), torch.randn(50, 8, generator=g)
    centers = centers.double()
    labels, dist_sq = nearest_center_torch(x, centers)
    expected_labels, expected_sq = _brute_nearest(x, centers)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    np.testing.assert_allclose(dist_sq.numpy(), expected_sq, rtol=1e-12, atol=1e-12)
    one_label, one_sq = nearest_center_torch(x, centers[:1])
    assert (one_label == 0).all()
    np.testing.assert_allclose(one_sq.numpy(), _brute_nearest(x, centers[:1])[1], rtol=1e-12)


def test_torch_path_settles_near_ties_that_float32_cannot_see():
    offset = 1e5
    centers = torch.tensor([[offset + 1.0, 0.0], [offset - 1.0, 0.0]], dtype=torch.float64)
    gaps = torch.linspace(-1e-7, 1e-7, 41, dtype=torch.float64)
    x = torch.stack([offset + gaps, torch.ones_like(gaps)], dim=1)
    np.testing.assert_array_equal(
        nearest_center_torch(x, centers)[0].numpy(), _brute_nearest(x, centers)[0]
    )


def test_w2_sq_is_the_closed_form_for_diagonal_gaussians():
    g = torch.Generator().manual_seed(2)
    mu_a, mu_b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    sigma_a, sigma_b = torch.rand(3, 5, 4, generator=g), torch.rand(3, 5, 4, generator=g)
    # W2^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), diagonal S
    trace_term = (sigma_a**2 + sigma_b**2 - 2 * sigma_a * sigma_b).sum(-1)
    expected = ((mu_a - mu_b) ** 2).sum(-1) + trace_term
    torch.testing.assert_close(w2_sq(mu_a, sigma_a, mu_b, sigma_b), expected)
    assert w2_sq(mu_a, sigma_a, mu_b, sigma_b).shape == (3, 5)
    assert float(w2_sq(mu_a, sigma_a, mu_a, sigma_a).abs().max()) == 0.0


def test_metric_features_embed_w2_as_euclidean():
    g = torch.Generator().manual_seed(3)
    mu, sigma = torch.randn(10, 4, generator=g), torch.rand(10, 4, generator=g)
    for metric in ("w2", "geodesic"):
        features = metric_features(mu, sigma, metric)
        assert features.shape == (10, 8)
        torch.testing.assert_close(
            sq_distances(features, features), w2_sq(mu[:, None], sigma[:, None], mu, sigma)
        )
    assert torch.equal(metric_features(mu, sigma, "euclidean"), mu)


def test_bad_arguments_raise():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="metric"):
        metric_features(x, x, "cosine")
    with pytest.raises(ValueError, match="shapes differ"):
        metric_features(x, torch.zeros(4, 2), "w2")
    with pytest.raises(ValueError, match="nearest_center needs"):
        nearest_center(x, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="chunk_rows"):
        nearest_center(x, torch.zeros(2, 3), chunk_rows=0)
