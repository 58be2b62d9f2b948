import math

import numpy as np
import pytest
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from geovq.metrics import (
    bits_per_image,
    code_counts,
    dead_codes,
    mse_per_pixel,
    perplexity,
    psnr,
    ssim,
    summarize_codes,
    utilisation,
)


def numpy_perplexity(counts: np.ndarray) -> float:
    probs = counts[counts > 0] / counts.sum()
    return float(2.0 ** -(probs * np.log2(probs)).sum())


@pytest.fixture
def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 28, 28, generator=generator)
    noise = 0.1 * torch.randn(6, 1, 28, 28, generator=generator)
    return (images + noise).clamp(0, 1), images


def test_code_counts_shared_matches_brute_force():
    codes = torch.randint(0, 5, (7, 3, 4), generator=torch.Generator().manual_seed(1))
    expected = np.zeros(5, dtype=np.int64)
    for code in codes.flatten().tolist():
        expected[code] += 1
    counts = code_counts(codes, 5)
    assert counts.shape == (5,)
    np.testing.assert_array_equal(counts.numpy(), expected)


def test_code_counts_per_position_matches_brute_force():
    codes = torch.randint(0, 6, (9, 2, 3), generator=torch.Generator().manual_seed(2))
    expected = np.zeros((6, 6), dtype=np.int64)
    for image in codes.tolist():
        for h, row in enumerate(image):
            for w, code in enumerate(row):
                expected[h * 3 + w, code] += 1
    counts = code_counts(codes, 6, per_position=True)
    assert counts.shape == (6, 6)
    np.testing.assert_array_equal(counts.numpy(), expected)
    flat_counts = code_counts(codes.reshape(9, 6), 6, per_position=True)
    np.testing.assert_array_equal(flat_counts.numpy(), expected)


def test_code_counts_rejects_codes_out_of_range():
    with pytest.raises(ValueError):
        code_counts(torch.tensor([[0, 4]]), 4)
    with pytest.raises(ValueError):
        code_counts(torch.tensor([[-1, 0]]), 4)


def test_usage_metrics_on_hand_made_counts():
    counts = torch.tensor([5, 0, 3, 0, 2, 0, 0, 6])
    assert utilisation(counts) == pytest.approx(4 / 8)
    assert dead_codes(counts) == 4
    assert perplexity(counts) == pytest.approx(numpy_perplexity(counts.numpy()), rel=1e-12)


def test_perplexity_closed_forms():
    assert perplexity(torch.full((16,), 7)) == pytest.approx(16.0)
    assert perplexity(torch.tensor([0, 0, 42, 0])) == pytest.approx(1.0)
    # Two codes used 1:3: 2 ** H(1/4, 3/4).
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert perplexity(torch.tensor([1, 3, 0])) == pytest.approx(2**h)


def test_per_position_perplexity_is_mean_of_positions():
    counts = torch.tensor([[4, 4, 0], [8, 0, 0], [1, 2, 5]])
    expected = np.mean([numpy_perplexity(row) for row in counts.numpy()])
    assert perplexity(counts) == pytest.approx(expected, rel=1e-12)
    assert utilisation(counts) == pytest.approx(6 / 9)
    assert dead_codes(counts) == 3


def test_bits_per_image():
    assert bits_per_image(8, 256) == 64
    assert bits_per_image(49, 512) == pytest.approx(49 * 9)


def test_summarize_codes_uses_totals_not_batch_means():
    generator = torch.Generator().manual_seed(3)
    batch_a = torch.randint(0, 2, (50, 4), generator=generator)  # codes 0-1 only
    batch_b = torch.randint(2, 8, (10, 4), generator=generator)  # codes 2-7 only
    codes = torch.cat([batch_a, batch_b])
    summary = summarize_codes(codes, 8)
    totals = np.bincount(codes.flatten().numpy(), minlength=8)
    assert summary["perplexity"] == pytest.approx(numpy_perplexity(totals))
    assert summary["utilisation"] == pytest.approx((totals > 0).mean())
    assert summary["dead_codes"] == (totals == 0).sum()
    assert summary["bits_per_image"] == pytest.approx(4 * 3)
    batch_mean = (perplexity(code_counts(batch_a, 8)) + perplexity(code_counts(batch_b, 8))) / 2
    assert summary["perplexity"] != pytest.approx(batch_mean)


def test_summarize_codes_per_position():
    codes = torch.tensor([[[0, 1], [2, 3]], [[0, 1], [3, 3]]])
    summary = summarize_codes(codes, 4, per_position=True)
    # Positions 0, 1, 3 use one code each (perplexity 1), position 2 uses two equally (2).
    assert summary["perplexity"] == pytest.approx((1 + 1 + 2 + 1) / 4)
    assert summary["dead_codes"] == 16 - 5
    assert summary["bits_per_image"] == pytest.approx(4 * 2)


def test_mse_per_pixel(image_pair):
    reconstructions, images = image_pair
    expected = ((reconstructions.numpy() - images.numpy()) ** 2).mean()
    assert mse_per_pixel(reconstructions, images) == pytest.approx(expected, rel=1e-6)


def test_psnr_matches_torchmetrics_class_and_closed_form(image_pair):
    reconstructions, images = image_pair
    metric = PeakSignalNoiseRatio(data_range=1.0)
    metric.update(reconstructions[:2], images[:2])
    metric.update(reconstructions[2:], images[2:])
    value = psnr(reconstructions, images)
    assert value == pytest.approx(metric.compute().item(), rel=1e-5)
    mse = ((reconstructions.double() - images.double()) ** 2).mean().item()
    assert value == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)


def test_ssim_matches_torchmetrics_class(image_pair):
    reconstructions, images = image_pair
    metric = StructuralSimilarityIndexMeasure(data_range=1.0)
    metric.update(reconstructions[:2], images[:2])
    metric.update(reconstructions[2:], images[2:])
    expected = metric.compute().item()
    assert ssim(reconstructions, images) == pytest.approx(expected, rel=1e-5)
    # Chunking must not change the value (sum of per-image SSIMs, divided by N).
    assert ssim(reconstructions, images, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-6)


def test_image_metrics_reject_mismatched_shapes(image_pair):
    reconstructions, images = image_pair
    with pytest.raises(ValueError):
        psnr(reconstructions[:3], images)
    with pytest.raises(ValueError):
        mse_per_pixel(reconstructions, images[:, :, :10])
