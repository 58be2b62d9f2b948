import math

import pytest
import torch

from geovq.models.fsq import (
    BOUND_EPSILON,
    FiniteScalarQuantizer,
    bits_per_code,
    codebook_size,
)
from geovq.models.vqvae import VQVAE, VQVAEConfig, validate_config


def _by_hand(z: float, level: int) -> tuple[float, int, float]:
    """(bounded value, digit, d quantized / dz) of one channel, from the paper's formulas."""
    half_range = (level - 1) * (1 - BOUND_EPSILON) / 2
    offset = 0.5 if level % 2 == 0 else 0.0
    shift = math.atanh(offset / half_range)
    bounded = math.tanh(z + shift) * half_range - offset
    half_width = level // 2
    digit = round(bounded) + half_width
    slope = half_range * (1 - math.tanh(z + shift) ** 2) / half_width
    return bounded, digit, slope


def test_level_arithmetic():
    assert codebook_size((8, 5, 5, 5)) == 1000
    assert bits_per_code((4, 4, 4, 4)) == pytest.approx(8.0)
    assert bits_per_code((8, 8, 4)) == pytest.approx(8.0)
    config = VQVAEConfig.fsq((8, 5, 5, 5), grid_h=2, grid_w=4)
    assert (config.k, config.codebook_dim) == (1000, 4)
    assert config.bits_per_image == pytest.approx(8 * math.log2(1000))
    assert VQVAEConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("levels", [(4, 5), (8, 5, 5, 5), (3, 6)])
def test_rounding_codes_and_straight_through_match_a_hand_computation(levels):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(50, len(levels), generator=generator, dtype=torch.float64) * 2
    z[0] = 100.0  # saturates at the top digit of every channel
    z[1] = -100.0  # and at the bottom one
    quantizer = FiniteScalarQuantizer(levels)
    z_in = z.float().requires_grad_(True)
    quantized = quantizer.quantize(z_in)
    quantized.sum().backward()
    codes = quantizer.assign_codes(z.float())
    for row in range(z.shape[0]):
        code, radix = 0, 1
        for channel, level in enumerate(levels):
            _, digit, slope = _by_hand(float(z[row, channel]), level)
            assert 0 <= digit < level
            expected = (digit - level // 2) / (level // 2)
            assert float(quantized[row, channel].detach()) == pytest.approx(expected, abs=1e-6)
            assert float(z_in.grad[row, channel]) == pytest.approx(slope, rel=1e-4, abs=1e-6)
            code += digit * radix
            radix *= level
        assert int(codes[row]) == code
    assert int(codes[0]) == codebook_size(levels) - 1
    assert int(codes[1]) == 0


def test_even_levels_reach_every_integer_and_odd_levels_are_symmetric():
    quantizer = FiniteScalarQuantizer((4, 5))
    z = torch.linspace(-6, 6, 2001).unsqueeze(1).repeat(1, 2)
    rounded = torch.round(quantizer.bound(z))
    assert sorted(rounded[:, 0].unique().tolist()) == [-2, -1, 0, 1]
    assert sorted(rounded[:, 1].unique().tolist()) == [-2, -1, 0, 1, 2]


def test_implicit_codebook_enumerates_the_grid_and_inverts_the_codes():
    quantizer = FiniteScalarQuantizer((4, 3, 5))
    codebook = quantizer.codebook
    assert codebook.shape == (60, 3)
    assert len({tuple(row) for row in codebook.tolist()}) == 60
    assert torch.equal(quantizer.codes_from_grid(codebook), torch.arange(60))
    # code 1 is digit 1 of channel 0, the others at their lowest digit: (1 - 2) / 2, -1, -1
    assert codebook[1].tolist() == [-0.5, -1.0, -1.0]
    assert codebook[4].tolist() == [-1.0, 0.0, -1.0]


def test_two_levels_are_rejected():
    with pytest.raises(ValueError, match=">= 3"):
        FiniteScalarQuantizer((2, 4))


def test_fsq_vqvae_trains_and_decodes_its_codes():
    config = VQVAEConfig.fsq((4, 4, 4, 4), grid_h=7, grid_w=7)
    validate_config(config)
    model = VQVAE(config, seed=0)
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    logits, codes, losses = model(images)
    assert codes.shape == (6, 7, 7)
    assert int(codes.max()) < 256
    assert float(losses["commitment"]) == 0.0
    torch.nn.functional.binary_cross_entropy_with_logits(logits, images).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0  # gradients pass the rounding
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.codes_for(images), model(images)[1])
        assert torch.allclose(model.decode_codes(codes), model(images)[0], atol=1e-5)


def test_fsq_config_with_mismatched_k_is_rejected():
    config = VQVAEConfig(quantizer="fsq", levels=(4, 4), k=256, codebook_dim=2)
    with pytest.raises(ValueError, match="FSQ levels"):
        validate_config(config)
