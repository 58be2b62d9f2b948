"""geovq/quant/codebook.py: shapes, codes against brute force, codewords, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geovq.quant.codebook import (
    Codebook,
    assign_codes,
    chunk_latents,
    codeword_latents,
    fit_codebook,
)

N, L, C = 120, 4, 3


def chunk_gaussians(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mu, sigma (n, L, C) of clustered chunk Gaussians, sigma in (0.05, 1)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(6, C, generator=g) * 2
    mu = centers[torch.randint(0, 6, (n, L), generator=g)] + torch.randn(n, L, C, generator=g)
    sigma = 0.05 + 0.95 * torch.rand(n, L, C, generator=g)
    return mu, sigma


def brute_force_codes(codebook: Codebook, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Nearest codeword by float64 cdist: on mu (euclidean) or on [mu, sigma] (W2)."""
    n, positions, _ = mu.shape
    codes = torch.empty(n, positions, dtype=torch.int64)
    for position in range(positions):
        code_mu = codebook.mu[position] if codebook.per_position else codebook.mu
        code_sigma = codebook.sigma[position] if codebook.per_position else codebook.sigma
        x, centers = mu[:, position].double(), code_mu.double()
        if codebook.metric != "euclidean":
            x = torch.cat([x, sigma[:, position].double()], 1)
            centers = torch.cat([centers, code_sigma.double()], 1)
        codes[:, position] = torch.cdist(x, centers).argmin(1)
    return codes


def test_chunk_latents():
    latents = torch.arange(2 * 32.0).reshape(2, 32)
    chunks = chunk_latents(latents, 8)
    assert chunks.shape == (2, 8, 4)
    assert torch.equal(chunks[1, 2], latents[1, 8:12])
    with pytest.raises(ValueError, match="divide"):
        chunk_latents(latents, 5)


@pytest.mark.parametrize("metric", ["euclidean", "w2"])
@pytest.mark.parametrize("per_position", [False, True])
def test_codes_are_the_brute_force_nearest_codeword(metric, per_position):
    mu, sigma = chunk_gaussians(N, 0)
    fit = fit_codebook(mu, sigma, 10, metric, per_position=per_position, seed=1)
    assert torch.equal(fit.codes, brute_force_codes(fit.codebook, mu, sigma))
    new_mu, new_sigma = chunk_gaussians(50, 1)
    codes = assign_codes(fit, new_mu, new_sigma)
    assert torch.equal(codes, brute_force_codes(fit.codebook, new_mu, new_sigma))


def test_geodesic_w2_assignment_is_the_brute_force_nearest_medoid():
    mu, sigma = chunk_gaussians(N, 2)
    fit = fit_codebook(mu, sigma, 10, "geodesic", seed=2)
    new_mu, new_sigma = chunk_gaussians(50, 3)
    codes = assign_codes(fit, new_mu, new_sigma, assign="w2")
    assert torch.equal(codes, brute_force_codes(fit.codebook, new_mu, new_sigma))


@pytest.mark.parametrize("per_position", [False, True])
def test_geodesic_codes_of_the_fit_points_survive_reassignment(per_position):
    mu, sigma = chunk_gaussians(N, 4)
    fit = fit_codebook(mu, sigma, 8, "geodesic", per_position=per_position, knn=6, seed=4)
    assert torch.equal(assign_codes(fit, mu, sigma, assign="geodesic"), fit.codes)


def test_codewords_are_cluster_means_or_medoid_chunks():
    mu, sigma = chunk_gaussians(N, 5)
    flat_mu, flat_sigma = mu.reshape(-1, C).double(), sigma.reshape(-1, C).double()
    for metric in ("euclidean", "w2"):
        fit = fit_codebook(mu, sigma, 6, metric, seed=5)
        flat_codes = fit.codes.reshape(-1)
        for code in range(6):
            members = flat_codes == code
            for values, codewords in ((flat_mu, fit.codebook.mu), (flat_sigma, fit.codebook.sigma)):
                torch.testing.assert_close(
                    codewords[code].double(), values[members].mean(0), rtol=1e-4, atol=1e-5
                )
    fit = fit_codebook(mu, sigma, 6, "geodesic", seed=5)
    chunks = torch.cat([flat_mu, flat_sigma], 1)
    codewords = torch.cat([fit.codebook.mu, fit.codebook.sigma], 1).double()
    assert (codewords[:, None, :] == chunks[None, :, :]).all(2).any(1).all()


@pytest.mark.parametrize("metric", ["euclidean", "w2", "geodesic"])
def test_per_position_shapes_and_decoding(metric):
    mu, sigma = chunk_gaussians(N, 6)
    fit = fit_codebook(mu, sigma, 7, metric, per_position=True, seed=6)
    assert fit.codebook.per_position and fit.codebook.k == 7
    assert fit.codebook.mu.shape == fit.codebook.sigma.shape == (L, 7, C)
    assert fit.codes.shape == (N, L) and fit.codes.dtype == torch.int64
    latents = codeword_latents(fit.codebook, fit.codes)
    assert latents.shape == (N, L * C)
    by_hand = torch.stack([fit.codebook.mu[p, fit.codes[:, p]] for p in range(L)], 1)
    assert torch.equal(latents, by_hand.reshape(N, L * C))


def test_shared_codebook_decoding():
    mu, sigma = chunk_gaussians(N, 7)
    fit = fit_codebook(mu, sigma, 9, "w2", seed=7)
    assert fit.codebook.mu.shape == (9, C) and not fit.codebook.per_position
    latents = codeword_latents(fit.codebook, fit.codes)
    assert torch.equal(latents, fit.codebook.mu[fit.codes].reshape(N, L * C))


@pytest.mark.parametrize("metric", ["euclidean", "w2", "geodesic"])
def test_same_seed_same_codebook_and_codes(metric):
    mu, sigma = chunk_gaussians(N, 8)
    a = fit_codebook(mu, sigma, 8, metric, seed=3)
    b = fit_codebook(mu, sigma, 8, metric, seed=3)
    assert torch.equal(a.codebook.mu, b.codebook.mu)
    assert torch.equal(a.codebook.sigma, b.codebook.sigma)
    assert torch.equal(a.codes, b.codes)


def test_info_reports_the_fit():
    mu, sigma = chunk_gaussians(N, 9)
    mu[:, :, 0] += torch.where(torch.arange(N) < N // 2, 0.0, 1000.0)[:, None]  # two far islands
    fit = fit_codebook(mu, sigma, 5, "geodesic", knn=4, seed=9)
    assert fit.info["components_joined"] >= 1
    assert fit.info["objective"] > 0 and fit.info["fit_seconds"] >= 0
    assert fit.info["points"] == N * L


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((5, "cosine"), {}, "metric"),
        ((0, "w2"), {}, "k must be"),
        ((N * L + 1, "w2"), {}, "k must be"),
        ((N + 1, "w2"), {"per_position": True}, "k must be"),
        ((5, "geodesic"), {"knn": N * L}, "knn must be"),
        ((5, "geodesic"), {"edge_weight": "w3"}, "edge_weight"),
    ],
)
def test_bad_fit_arguments_raise(args, kwargs, message):
    mu, sigma = chunk_gaussians(N, 10)
    with pytest.raises(ValueError, match=message):
        fit_codebook(mu, sigma, *args, **kwargs)


def test_bad_shapes_and_assign_mode_raise():
    mu, sigma = chunk_gaussians(N, 11)
    with pytest.raises(ValueError, match="shapes differ"):
        fit_codebook(mu, sigma[:, :2], 5, "w2")
    with pytest.raises(ValueError, match=r"\(N, L, C\)"):
        fit_codebook(mu.reshape(N, -1), sigma.reshape(N, -1), 5, "w2")
    fit = fit_codebook(mu, sigma, 5, "w2")
    with pytest.raises(ValueError, match="assign mode"):
        assign_codes(fit, mu, sigma, assign="nearest")
    with pytest.raises(ValueError, match="dims"):
        assign_codes(fit, mu[:, :, :2], sigma[:, :, :2])


def test_codes_map_to_numpy_dtype():
    mu, sigma = chunk_gaussians(N, 12)
    fit = fit_codebook(mu, sigma, 5, "geodesic", seed=0)
    codes = assign_codes(fit, *chunk_gaussians(20, 13))
    assert codes.dtype == torch.int64 and codes.shape == (20, L)
    assert int(codes.min()) >= 0 and int(codes.max()) < 5
    assert np.isin(codes.numpy(), np.arange(5)).all()


def test_geodesic_barycenter_codewords_are_the_cell_means():
    mu, sigma = chunk_gaussians(60, 2)
    medoid = fit_codebook(mu, sigma, 6, "geodesic", seed=0, knn=8)
    bary = fit_codebook(mu, sigma, 6, "geodesic", seed=0, knn=8, codeword="barycenter")
    assert torch.equal(medoid.codes, bary.codes)  # same partition, other codewords
    flat_mu, flat_sigma = mu.reshape(-1, C), sigma.reshape(-1, C)
    for cell in range(6):
        members = bary.codes.reshape(-1) == cell
        assert torch.allclose(bary.codebook.mu[cell], flat_mu[members].mean(0), atol=1e-6)
        assert torch.allclose(bary.codebook.sigma[cell], flat_sigma[members].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="codeword"):
        fit_codebook(mu, sigma, 6, "geodesic", codeword="centroid")


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize(
    "metric, codeword, keep_medoids",
    [
        ("w2", "medoid", True),
        ("scalar", "medoid", True),
        ("geodesic", "medoid", True),
        ("geodesic", "medoid", False),  # a codebook saved before medoids were kept
        ("geodesic", "barycenter", True),
    ],
)
def test_restored_fit_assigns_new_points_as_the_original(
    metric, codeword, keep_medoids, per_position
):
    """A fit rebuilt from the saved codebook and the fit chunks gives new points the codes the
    original fit gives them (for geodesic: through the same kNN graph, barycentric codewords
    too)."""
    from geovq.quant.codebook import Codebook, restore_fit

    generator = torch.Generator().manual_seed(4)
    mu, sigma = torch.randn(60, 2, 3, generator=generator), torch.rand(60, 2, 3) + 0.1
    new_mu, new_sigma = torch.randn(25, 2, 3, generator=generator), torch.rand(25, 2, 3) + 0.1
    fit = fit_codebook(
        mu,
        sigma,
        6,
        metric,
        per_position=per_position,
        seed=0,
        knn=5,
        codeword=codeword,
        levels=(2, 3, 1) if metric == "scalar" else None,
    )
    saved = fit.codebook
    if not keep_medoids:
        saved = Codebook(saved.mu, saved.sigma, saved.metric)
    restored = restore_fit(saved, mu, sigma, knn=5)
    expected = assign_codes(fit, new_mu, new_sigma)
    assert torch.equal(assign_codes(restored, new_mu, new_sigma), expected)
    if metric == "geodesic":  # the graph assignment, not the nearest codeword
        assert restored.geodesic_fits


@pytest.mark.parametrize("codeword", ["medoid", "barycenter"])
def test_restoring_a_geodesic_fit_needs_its_own_fit_chunks(codeword):
    from geovq.quant.codebook import restore_fit

    generator = torch.Generator().manual_seed(5)
    mu, sigma = torch.randn(40, 2, 3, generator=generator), torch.rand(40, 2, 3) + 0.1
    fit = fit_codebook(mu, sigma, 4, "geodesic", seed=0, knn=5, codeword=codeword)
    with pytest.raises(ValueError, match="does not belong to these chunks"):
        restore_fit(fit.codebook, mu + 1.0, sigma, knn=5)
    with pytest.raises(ValueError, match="does not belong to these chunks"):
        restore_fit(fit.codebook, mu[:5], sigma[:5], knn=5)  # medoid indices out of range
