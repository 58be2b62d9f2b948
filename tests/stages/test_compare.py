import json

import numpy as np
import pytest
import scipy.linalg
import torch

from geovq.stages.compare import equal_rate_pairs, render_report
from tests.helpers import cli, snapshot

BASE = ("--device", "cpu", "-q")


@pytest.fixture(scope="module")
def compared(tiny_run_template, tmp_path_factory):
    import shutil

    run = tmp_path_factory.mktemp("compare") / "run"
    shutil.copytree(tiny_run_template, run)
    for args in (
        ("quantize", "--metric", "w2", "--k", "16"),
        ("quantize", "--metric", "euclidean", "--k", "16"),
        ("train-vqvae", "--grid", "2x4", "--k", "16", "--epochs", "1", "--init", "random"),
        ("train-prior", "--source", "quant/w2-k16", "--epochs", "1"),
    ):
        result = cli(*args, "--run-dir", run, *BASE)
        assert result.exit_code == 0, result.stderr
    result = cli(
        "compare",
        "--run-dir",
        run,
        "--samples",
        "32",
        "--sweep-k",
        "4,8,1048576",
        "--json",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.stderr
    return run, json.loads(result.stdout)["metrics"]


def test_compare_json_has_every_quantization(compared):
    run, metrics = compared
    assert set(metrics["sources"]) == {"quant/w2-k16", "quant/euclidean-k16", "vqvae/vqvae-2x4-k16"}
    on_disk = json.loads((run / "report/metrics.json").read_text())
    assert set(on_disk["sources"]) == set(metrics["sources"])
    w2 = metrics["sources"]["quant/w2-k16"]
    assert w2["prior"]["splits"]["test"]["bits_per_code"] > 0
    assert w2["prior"]["uniform_bits_per_code"] == pytest.approx(4.0)
    assert metrics["sources"]["vqvae/vqvae-2x4-k16"]["prior"] is None
    assert "vae.safetensors" in metrics["vae_reference"]


def test_equal_rate_pairs_by_bits(compared):
    _, metrics = compared
    pairs = {(p["posthoc"], p["vqvae"]) for p in metrics["equal_rate_pairs"]}
    assert pairs == {
        ("quant/w2-k16", "vqvae/vqvae-2x4-k16"),
        ("quant/euclidean-k16", "vqvae/vqvae-2x4-k16"),
    }
    entries = {
        "quant/a": {
            "kind": "posthoc",
            "bits_per_image": 64.0,
            "splits": {"test": {"mse_per_pixel": 0.02, "utilisation": 1.0}},
        },
        "quant/b": {
            "kind": "posthoc",
            "bits_per_image": 392.0,
            "splits": {"test": {"mse_per_pixel": 0.01, "utilisation": 1.0}},
        },
        "vqvae/c": {
            "kind": "vqvae",
            "bits_per_image": 64.0,
            "splits": {"test": {"mse_per_pixel": 0.04, "utilisation": 0.5}},
        },
    }
    [pair] = equal_rate_pairs(entries, "test")
    assert (pair["posthoc"], pair["vqvae"], pair["mse_ratio"]) == ("quant/a", "vqvae/c", 0.5)


def test_rate_distortion_sweep_points(compared):
    run, metrics = compared
    sweep = [p for p in metrics["rate_distortion"] if p.get("sweep")]
    assert {p["bits_per_image"] for p in sweep} == {16.0, 24.0}
    # 2**20 codewords is more than the tiny fit split's chunks: skipped, and said for each family
    skipped = metrics["sweep_skipped"]
    assert len(skipped) == 2 and all("K=1048576" in line and "points" in line for line in skipped)
    assert (run / "report/rate_distortion.png").is_file()


def test_report_and_figures(compared):
    run, metrics = compared
    text = (run / "report/report.md").read_text()
    assert "quant/w2-k16" in text and "Equal bit rate" in text
    assert text == render_report(json.loads((run / "report/metrics.json").read_text()))
    for path in metrics["figures"].values():
        assert (run / path).is_file()


def test_psnr_and_ssim_match_torchmetrics(compared):
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    from geovq.stages.compare import reconstruction_figures

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 28, 28), generator=generator, dtype=torch.uint8)
    recons = (images.float() / 255 + 0.05 * torch.randn(6, 1, 28, 28, generator=generator)).clamp(
        0, 1
    )
    figures = reconstruction_figures(recons, images)
    assert figures["psnr"] == pytest.approx(
        float(PeakSignalNoiseRatio(data_range=1.0)(recons, images / 255)), rel=1e-5
    )
    assert figures["ssim"] == pytest.approx(
        float(StructuralSimilarityIndexMeasure(data_range=1.0)(recons, images / 255)), rel=1e-5
    )


def test_frechet_matches_scipy_on_small_gaussians():
    from geovq.metrics import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (400, 3)), rng.normal(0.5, 2, (300, 3))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(
        ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real
    )
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-8)


def test_compare_without_quantization(tiny_run):
    before = snapshot(tiny_run)
    result = cli("compare", "--run-dir", tiny_run)
    assert result.exit_code != 0 and "geovq quantize" in result.stderr
    assert snapshot(tiny_run) == before


def test_compare_bad_sweep(tiny_run):
    result = cli("compare", "--run-dir", tiny_run, "--sweep-k", "16,x")
    assert result.exit_code != 0 and "--sweep-k" in result.stderr


def test_compare_refuses_a_changed_vae(compared, tmp_path):
    import shutil

    from geovq.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(compared[0], run)
    weights, meta = RunDir(run).load_tensors("vae.safetensors", "vae")
    weights["decoder.net.0.bias"] += 1
    RunDir(run).save_tensors("vae.safetensors", weights, meta)
    result = cli("compare", "--run-dir", run, "--samples", "8")
    assert result.exit_code != 0 and "changed since" in result.stderr
