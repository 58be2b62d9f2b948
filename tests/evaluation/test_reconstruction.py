import pytest
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from geovq.evaluation.reconstruction import (
    decode_images,
    decoded_mse,
    quantization_metrics,
    reconstruction_figures,
)
from geovq.quant.codebook import Codebook


def test_psnr_and_ssim_match_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 28, 28), generator=generator, dtype=torch.uint8)
    noise = 0.05 * torch.randn(6, 1, 28, 28, generator=generator)
    recons = (images.float() / 255 + noise).clamp(0, 1)
    figures = reconstruction_figures(recons, images)
    assert figures["psnr"] == pytest.approx(
        float(PeakSignalNoiseRatio(data_range=1.0)(recons, images / 255)), rel=1e-5
    )
    assert figures["ssim"] == pytest.approx(
        float(StructuralSimilarityIndexMeasure(data_range=1.0)(recons, images / 255)), rel=1e-5
    )
    assert figures["mse_per_pixel"] == pytest.approx(float(((recons - images / 255) ** 2).mean()))


def _linear_decoder():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2 * 3 * 3)
    return lambda z: layer(z).reshape(-1, 2, 3, 3)


def test_decoded_mse_is_the_whole_split_mean_whatever_the_batch():
    decode = _linear_decoder()
    latents = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    images = torch.randint(0, 256, (7, 2, 3, 3), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        direct = float(((torch.sigmoid(decode(latents)) - images / 255.0) ** 2).mean())
    for batch in (1, 3, 100):
        assert decoded_mse(decode, latents, images, torch.device("cpu"), batch) == pytest.approx(
            direct, rel=1e-6
        )
    recons = decode_images(decode, latents, torch.device("cpu"), batch=2)
    assert float(((recons - images / 255.0) ** 2).mean()) == pytest.approx(direct, rel=1e-6)


def test_quantization_metrics_distortion_is_brute_force_w2():
    generator = torch.Generator().manual_seed(3)
    codebook = Codebook(torch.randn(3, 2, generator=generator), torch.rand(3, 2) + 0.1, "w2")
    mu, sigma = torch.randn(5, 2, 2, generator=generator), torch.rand(5, 2, 2) + 0.1
    codes = torch.randint(0, 3, (5, 2), generator=generator)
    images = torch.randint(0, 256, (5, 2, 3, 3), generator=generator)
    figures = quantization_metrics(
        codebook, codes, mu, sigma, _linear_decoder(), images, torch.device("cpu")
    )
    brute = 0.0
    for n in range(5):
        for position in range(2):
            code = codes[n, position]
            brute += float(((mu[n, position] - codebook.mu[code]) ** 2).sum())
            brute += float(((sigma[n, position] - codebook.sigma[code]) ** 2).sum())
    assert figures["distortion"] == pytest.approx(brute / 10, rel=1e-6)
    assert figures["utilisation"] == pytest.approx(len(codes.unique()) / 3)
