import pytest
import torch
from PIL import Image

from geovq.plots import (
    rate_distortion_figure,
    save_code_usage,
    save_image_rows,
    save_rate_distortion,
    save_sample_rows,
)


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


def _study_points() -> list[dict]:
    """Every family of the study, several on top of one another as in a quick run."""
    points = []
    for method in ("euclidean", "w2", "geodesic", "geodesic-bary", "scalar"):
        for refit, mse in ((True, 0.132), (False, 0.164)):
            suffix = "" if refit else " [vae decoder]"
            family = f"post-hoc {method} (flat){' + refit' if refit else ''}"
            points.append(_point(f"quant/{method}-k32{suffix}", family, method, 40.0, mse, refit))
    points.append(_point("quant/w2-k32-spatial", "post-hoc w2 (spatial) + refit", "w2", 245, 0.103))
    points[-1]["vae"] = "spatial"
    points.append(_point("vqvae/vqvae-2x4-k32", "vq-vae", "vq-vae", 40.0, 0.117))
    points.append(_point("vqvae/vqvae-7x7-k32", "vq-vae", "vq-vae", 245.0, 0.109))
    points.append(_point("vqvae/fsq-2x4-l8-4", "fsq", "fsq", 40.0, 0.112))
    points.append(_point("vqvae/fsq-7x7-l8-4", "fsq", "fsq", 245.0, 0.102))
    sweep = _point("w2 K=8", "post-hoc w2 (flat)", "w2", 24.0, 0.164, False)
    points.append({**sweep, "k": 8, "sweep": True})
    return points


def _point(name, family, method, bits, mse, refit=False) -> dict:
    return {
        "name": name,
        "family": family,
        "method": method,
        "refit": refit,
        "vae": "",
        "bits_per_image": float(bits),
        "mse": mse,
    }


@pytest.mark.parametrize("rate", ["nominal", "prior"])
def test_rate_distortion_figure_is_readable(rate):
    figure = rate_distortion_figure(_study_points(), rate=rate)
    ax = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    labels = [text for text in ax.texts if text.get_text()]
    # every point named once (the sweep's K and every source)
    assert sorted(t.get_text() for t in labels) == sorted(
        ["K=8"] + [p["name"].split("/", 1)[1] for p in _study_points() if not p.get("sweep")]
    )
    boxes = [text.get_window_extent(renderer) for text in labels]
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :]), labels[i].get_text()
        assert ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
    markers = [ax.transData.transform((p["bits_per_image"], p["mse"])) for p in _study_points()]
    for box in boxes:  # no label covers a point
        assert not any(box.contains(x, y) for x, y in markers)
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.bbox.x1  # outside the axes
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    ticks = [label.get_text() for label in ax.get_xticklabels()]
    assert ticks == ["16", "32", "64", "128", "256"]
    assert ("prior" in ax.get_xlabel()) == (rate == "prior")


def test_rate_distortion_styles_tell_families_apart():
    figure = rate_distortion_figure(_study_points())
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    style = {
        family: (line.get_color(), line.get_marker(), line.get_markerfacecolor() == "white")
        for family, line in lines.items()
    }
    assert len(set(style.values())) == len(style)  # no two families look alike
    assert style["vq-vae"][1] == "*" and style["fsq"][1] == "D"
    assert style["post-hoc w2 (flat) + refit"][2] is False  # filled: refit
    assert style["post-hoc w2 (flat)"][2] is True  # hollow: the VAE's decoder
    assert style["post-hoc w2 (spatial) + refit"][1] != style["post-hoc w2 (flat) + refit"][1]
    colours = {style[f"post-hoc {m} (flat) + refit"][0] for m in ("euclidean", "w2", "geodesic")}
    assert len(colours) == 3
