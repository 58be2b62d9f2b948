"""Transform coding: bit packing against strings of binary digits, the bit allocation against
an exhaustive search, the axes against numpy's SVD, and exact codes of latents that a code of
the budget can hold exactly."""

import itertools

import numpy as np
import pytest
import torch

from geovq.quant.codebook import Codebook, assign_codes, codeword_latents, fit_codebook
from geovq.quant.scalar import lloyd_max_1d
from geovq.quant.transform import (
    MAX_BITS,
    TransformCode,
    allocate_bits,
    check_budget,
    decode,
    encode,
    fit_transform,
    pack_bits,
    principal_axes,
    unpack_bits,
)


def test_pack_bits_writes_the_indices_binary_digits_in_order():
    generator = torch.Generator().manual_seed(0)
    bits = torch.tensor([3, 0, 5, 1, 3])  # 12 bits: three 4-bit symbols
    indices = torch.stack(
        [torch.randint(0, 2**b, (20,), generator=generator) for b in bits.tolist()], dim=1
    )
    packed = pack_bits(indices, bits, 4)
    for row in range(20):
        digits = "".join(
            format(int(indices[row, axis]), f"0{b}b") for axis, b in enumerate(bits.tolist()) if b
        )
        expected = [int(digits[start : start + 4], 2) for start in range(0, 12, 4)]
        assert packed[row].tolist() == expected
    assert torch.equal(unpack_bits(packed, bits, 4), indices)


def test_pack_bits_refuses_bits_that_are_not_whole_symbols():
    with pytest.raises(ValueError, match="whole symbols"):
        pack_bits(torch.zeros(2, 2, dtype=torch.int64), torch.tensor([3, 2]), 4)
    with pytest.raises(ValueError, match="hold 8 bits"):
        unpack_bits(torch.zeros(2, 2, dtype=torch.int64), torch.tensor([3, 2]), 4)


def _error(column: torch.Tensor, bits: int) -> float:
    levels = column.mean().reshape(1) if bits == 0 else lloyd_max_1d(column, 2**bits)
    return float(((column[:, None] - levels[None]) ** 2).min(1).values.mean())


def test_greedy_allocation_matches_an_exhaustive_search():
    generator = torch.Generator().manual_seed(1)
    scales = torch.tensor([3.0, 1.5, 0.7, 0.2])
    components = torch.randn(400, 4, generator=generator, dtype=torch.float64) * scales
    components[:, 1] = torch.rand(400, generator=generator, dtype=torch.float64) * 4  # uniform
    total = 7
    bits, levels = allocate_bits(components, total)
    errors = {
        (axis, b): _error(components[:, axis], b) for axis in range(4) for b in range(total + 1)
    }
    best = min(
        sum(errors[(axis, b)] for axis, b in enumerate(choice))
        for choice in itertools.product(range(total + 1), repeat=4)
        if sum(choice) == total
    )
    greedy = sum(errors[(axis, b)] for axis, b in enumerate(bits.tolist()))
    assert int(bits.sum()) == total
    assert greedy == pytest.approx(best, rel=1e-9)
    # each axis's levels are its 2^b optimal levels, padded with the last
    for axis, b in enumerate(bits.tolist()):
        count = 2**b
        assert levels.shape == (4, 2**MAX_BITS)
        assert torch.all(levels[axis, count:] == levels[axis, count - 1])
        assert _error(components[:, axis], b) == pytest.approx(
            float(((components[:, axis, None] - levels[axis, None, :count]) ** 2).min(1)[0].mean())
        )


def test_principal_axes_are_numpys_singular_vectors():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    x = x @ torch.randn(5, 5, generator=generator, dtype=torch.float64)
    centred = x - x.mean(0)
    axes = principal_axes(centred)
    _, singular, vt = np.linalg.svd(centred.numpy(), full_matrices=False)
    assert np.all(np.diff(singular) < 0)
    for column in range(5):  # the same axes up to sign, largest variance first
        dot = abs(float(axes[:, column] @ torch.from_numpy(vt[column])))
        assert dot == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(axes.T @ axes, torch.eye(5, dtype=torch.float64), atol=1e-12)
    top = axes.abs().argmax(0)
    assert torch.all(axes[top, torch.arange(5)] > 0)


def test_a_budget_that_holds_the_latents_codes_them_exactly():
    # Two hidden factors with 4 and 2 values, every pair equally often (so uncorrelated and
    # the principal axes are theirs), spread by a rotation over 4 dimensions: 3 bits hold
    # each latent exactly, so the code must give back every latent.
    generator = torch.Generator().manual_seed(3)
    first = torch.tensor([-3.0, -1.0, 1.0, 3.0], dtype=torch.float64)
    second = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    pairs = torch.cartesian_prod(first, second).repeat(25, 1)
    pairs = pairs[torch.randperm(200, generator=generator)]
    factors = torch.cat([pairs, torch.zeros(200, 2, dtype=torch.float64)], dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=torch.float64))
    mu = factors @ rotation.T + torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    code = fit_transform(mu, torch.ones_like(mu), symbols=3, k=2)
    assert code.bits.tolist() == [2, 1, 0, 0] and code.k == 2 and code.symbols == 3
    codes = encode(code, mu)
    assert codes.shape == (200, 3) and int(codes.max()) <= 1
    assert torch.allclose(decode(code, codes), mu, atol=1e-9)


def test_codebook_of_a_transform_code_round_trips_through_its_tensors():
    generator = torch.Generator().manual_seed(4)
    mu = torch.randn(120, 6, 2, generator=generator) * torch.linspace(2, 0.1, 12).view(6, 2)
    sigma = torch.rand(120, 6, 2, generator=generator) + 0.1
    fit = fit_codebook(mu, sigma, 16, "transform")
    assert fit.codes.shape == (120, 6) and fit.codebook.k == 16
    assert int(fit.codebook.transform.bits.sum()) == 6 * 4
    # new points get the codes encode gives; the fit points the fit's own codes
    assert torch.equal(assign_codes(fit, mu, sigma), fit.codes)
    restored = Codebook.from_tensors(fit.codebook.tensors(), "transform", 16)
    latents = codeword_latents(restored, fit.codes)
    direct = decode(fit.codebook.transform, fit.codes)
    assert latents.shape == (120, 12) and torch.allclose(latents.double(), direct, atol=1e-6)
    # the code beats the mean, and the fit's objective is its squared error
    error = float(((mu.reshape(120, -1).double() - direct) ** 2).sum())
    assert fit.info["objective"] == pytest.approx(error)
    assert error < float(((mu - mu.mean((0,))) ** 2).sum())


def test_transform_budgets_and_broken_files_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        check_budget(8, 2, 12)
    with pytest.raises(ValueError, match="at most 16"):
        check_budget(2, 4, 256)
    with pytest.raises(ValueError, match="per-position"):
        fit_codebook(torch.zeros(4, 2, 1), torch.ones(4, 2, 1), 4, "transform", per_position=True)
    code = fit_transform(torch.randn(50, 3), torch.ones(50, 3), symbols=1, k=4)
    broken = code.tensors()
    broken["bits"] = torch.tensor([1, 0, 0])  # 1 bit is not a 2-bit symbol
    with pytest.raises(ValueError, match="do not fit"):
        TransformCode.from_tensors(broken, 4)
    missing = {name: t for name, t in code.tensors().items() if name != "levels"}
    with pytest.raises(ValueError, match="lacks"):
        TransformCode.from_tensors(missing, 4)
