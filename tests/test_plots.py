import pytest
import torch
from PIL import Image

from geovq.plots import save_code_usage, save_image_rows, save_rate_distortion, save_sample_rows


def assert_png(path, expected):
    assert path == expected
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
        assert image.mode in ("RGB", "RGBA")


def images(count: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, channels, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_save_image_rows(tmp_path):
    rows = [("original", images(12)), ("VAE", images(12, seed=1)), ("W2 k=16", images(3))]
    path = tmp_path / "recon" / "rows.png"
    assert_png(save_image_rows(rows, path, max_images=10), path)


def test_save_image_rows_rgb(tmp_path):
    path = tmp_path / "rows.png"
    assert_png(save_image_rows([("original", images(4, channels=3))], path), path)


def test_save_image_rows_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        save_image_rows([], tmp_path / "rows.png")
    with pytest.raises(ValueError):
        save_image_rows([("empty", torch.empty(0, 1, 28, 28))], tmp_path / "rows.png")


@pytest.mark.parametrize("title", [None, "samples"])
def test_save_sample_rows(tmp_path, title):
    path = tmp_path / "grid.png"
    rows = [("prior", images(13)), ("random codes", images(5, seed=1))]
    assert_png(save_sample_rows(rows, path, nrow=4, title=title), path)


def test_save_sample_rows_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        save_sample_rows([("none", torch.empty(0, 1, 28, 28))], tmp_path / "grid.png")


def test_save_code_usage(tmp_path):
    histograms = {
        "flat": torch.tensor([10, 0, 3, 7, 1]),
        "spatial": torch.randint(0, 5, (4, 8), generator=torch.Generator().manual_seed(0)),
    }
    path = tmp_path / "usage.png"
    assert_png(save_code_usage(histograms, path), path)


def test_save_code_usage_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        save_code_usage({}, tmp_path / "usage.png")
    with pytest.raises(ValueError):
        save_code_usage({"none": torch.zeros(0)}, tmp_path / "usage.png")


def test_save_rate_distortion(tmp_path):
    points = [
        {"name": "w2 k=256", "family": "post-hoc flat", "bits_per_image": 8.0, "mse": 0.04},
        {"name": "w2 k=16", "family": "post-hoc flat", "bits_per_image": 4.0, "mse": 0.06},
        {"name": "w2 k=16", "family": "post-hoc spatial", "bits_per_image": 196.0, "mse": 0.02},
        {"name": "w2 k=64", "family": "post-hoc spatial", "bits_per_image": 294.0, "mse": 0.015},
        {"name": "vqvae k=16", "family": "vq-vae", "bits_per_image": 196.0, "mse": 0.01},
    ]
    path = tmp_path / "rd.png"
    assert_png(save_rate_distortion(points, path), path)


def test_save_rate_distortion_rejects_bad_points(tmp_path):
    with pytest.raises(ValueError):
        save_rate_distortion([], tmp_path / "rd.png")
    with pytest.raises(ValueError):
        save_rate_distortion([{"name": "x", "family": "f", "mse": 0.1}], tmp_path / "rd.png")
