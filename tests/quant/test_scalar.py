"""geovq/quant/scalar.py and the scalar metric of fit_codebook, against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from geovq.quant import scalar
from geovq.quant.codebook import assign_codes, fit_codebook


def brute_force_1d(values: list[float], levels: int) -> float:
    """Least SSE over every split of the sorted values into `levels` contiguous non-empty runs."""
    x = sorted(values)
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(x)), levels - 1):
        bounds = (0, *cuts, len(x))
        sse = 0.0
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            run = x[start:stop]
            mean = sum(run) / len(run)
            sse += sum((v - mean) ** 2 for v in run)
        best = min(best, sse)
    return best


def sse(values: torch.Tensor, centers: torch.Tensor) -> float:
    return float(((values.double()[:, None] - centers[None, :]) ** 2).min(1).values.sum())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [2, 3, 4])
def test_lloyd_max_reaches_the_brute_force_optimum(seed, levels):
    generator = torch.Generator().manual_seed(seed)
    # a skewed mixture where Lloyd from a poor start gets stuck
    values = torch.cat(
        [torch.randn(8, generator=generator), 5 + torch.rand(4, generator=generator)]
    )
    centers = scalar.lloyd_max_1d(values, levels)
    assert centers.shape == (levels,)
    assert torch.all(centers[1:] >= centers[:-1])
    assert sse(values, centers) == pytest.approx(brute_force_1d(values.tolist(), levels), rel=1e-9)


def test_many_values_are_binned_and_still_near_optimal():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(20000, generator=generator)
    centers = scalar.lloyd_max_1d(values, 4)
    # the Lloyd–Max quantizer of N(0, 1) at 4 levels: ±0.4528, ±1.510 (Max 1960, table I)
    assert centers.tolist() == pytest.approx([-1.510, -0.4528, 0.4528, 1.510], abs=0.04)


def test_pack_codes_is_mixed_radix_and_the_product_codebook_matches():
    levels = (3, 2, 4)
    indices = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 1, 3]])
    assert scalar.pack_codes(indices, levels).tolist() == [0, 1, 3, 2 + 1 * 3 + 3 * 6]
    centers = [torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([5.0, 6.0]), torch.arange(4.0)]
    book = scalar.product_codebook(centers)
    assert book.shape == (24, 3)
    assert book[23].tolist() == [1.0, 6.0, 3.0]
    assert book[scalar.pack_codes(indices, levels)].tolist() == [
        [-1.0, 5.0, 0.0],
        [0.0, 5.0, 0.0],
        [-1.0, 6.0, 0.0],
        [1.0, 6.0, 3.0],
    ]


def test_scalar_codebook_codes_are_per_dimension_optima():
    generator = torch.Generator().manual_seed(3)
    mu = torch.randn(40, 3, 2, generator=generator)
    sigma = 0.1 + torch.rand(40, 3, 2, generator=generator)
    fit = fit_codebook(mu, sigma, 0, "scalar", levels=(3, 2))
    assert fit.codebook.mu.shape == (6, 2)
    flat = mu.reshape(-1, 2)
    for dim, count in enumerate((3, 2)):
        levels = torch.unique(fit.codebook.mu[:, dim]).double()
        assert len(levels) == count
        assert sse(flat[:, dim], levels) == pytest.approx(
            brute_force_1d(flat[:, dim].tolist(), count), rel=1e-6
        )
    # codes are the nearest product codeword in mu (brute force over all 6)
    nearest = torch.cdist(flat.double(), fit.codebook.mu.double()).argmin(1)
    assert torch.equal(fit.codes.reshape(-1), nearest)
    assert torch.equal(assign_codes(fit, mu, sigma), fit.codes)
    # sigma's levels are the mean sigma of each level's members
    digit0 = fit.codes.reshape(-1) % 3
    for level in range(3):
        expected = sigma.reshape(-1, 2)[digit0 == level, 0].mean()
        assert float(fit.codebook.sigma[level, 0]) == pytest.approx(float(expected), rel=1e-5)


def test_scalar_levels_must_match_the_chunk():
    mu = torch.randn(10, 2, 3)
    with pytest.raises(ValueError, match="one level count"):
        fit_codebook(mu, mu.abs(), 0, "scalar", levels=(4, 4))
