import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from geovq.rundir import sha256_file
from tests.helpers import cli, snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pipeline") / "run"
    result = cli("run", "--preset", "quick", "--run-dir", run, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return run, json.loads(result.stdout)


def test_quick_run_does_the_whole_study(quick_run):
    run, payload = quick_run
    stages = {item["stage"]: item["status"] for item in payload["metrics"]["stages"]}
    assert all(status == "ran" for status in stages.values())
    for key in (
        "train-vae",
        "train-vae/spatial",
        "quantize/geodesic-k32",
        "quantize/geodesic-bary-k32",
        "quantize/scalar-k32",
        "quantize/scalar-k32-spatial",
        "quantize/transform-k32",
        "refit-decoder/transform-k32",
        "train-vqvae/vqvae-7x7-k32",
        "train-vqvae/fsq-2x4-l8-4",
        "compare/test",
    ):
        assert key in stages
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    # equal budget: the end-to-end models train VAE epochs + refit epochs (1 + 1 in quick)
    assert manifest["train-vqvae/fsq-2x4-l8-4"]["settings"]["vqvae"]["epochs"] == 2
    assert manifest["train-vae"]["settings"]["vae"]["target_rate"] == 64.0
    report = json.loads((run / "report/test/metrics.json").read_text())
    pairs = {(p["posthoc"], p["vqvae"]) for p in report["equal_rate_pairs"]}
    assert ("quant/w2-k32", "vqvae/vqvae-2x4-k32") in pairs
    assert ("quant/w2-k32-spatial", "vqvae/vqvae-7x7-k32") in pairs
    text = (run / "report/test/report.md").read_text()
    assert text.startswith("# geovq compare") and "SMOKE RUN" in text.split("|")[0]
    assert (run / "report/test/rate_distortion.png").is_file()


def test_second_run_rewrites_nothing(quick_run):
    run, _ = quick_run
    before = {path: sha256_file(run / path) for path in snapshot(run)}
    times = snapshot(run)
    result = cli("run", "--preset", "quick", "--run-dir", run, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    statuses = {item["status"] for item in json.loads(result.stdout)["metrics"]["stages"]}
    assert statuses == {"current"}
    assert {path: sha256_file(run / path) for path in snapshot(run)} == before
    assert snapshot(run) == times


def test_force_redoes_a_stage_and_what_depends_on_it(quick_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_run[0], run)
    result = cli(
        "run",
        "--preset",
        "quick",
        "--run-dir",
        run,
        "--device",
        "cpu",
        "--force",
        "train-vqvae",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    ran = {
        i["stage"] for i in json.loads(result.stdout)["metrics"]["stages"] if i["status"] == "ran"
    }
    assert "train-vqvae/vqvae-2x4-k32" in ran and "train-prior/vqvae-vqvae-2x4-k32" in ran
    assert "compare/test" in ran and "train-vae" not in ran and "quantize/w2-k32" not in ran


def test_held_out_split_without_retraining(quick_run, tmp_path):
    """extract --as a new split, compare on it: every source is covered (post-hoc codes
    assigned on the fly), and a later `geovq run` finds every stage still current."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_run[0], run)
    for vae in ((), ("--vae", "spatial")):
        args = (
            "extract",
            "--run-dir",
            run,
            *vae,
            "--as",
            "heldout",
            "--limit",
            "20",
            "--force",
            "-q",
        )
        result = cli(*args, "--device", "cpu")
        assert result.exit_code == 0, result.stderr
    args = ("--split", "heldout", "--samples", "16", "--device", "cpu", "--json")
    result = cli("compare", "--run-dir", run, *args)
    assert result.exit_code == 0, result.stderr
    heldout = json.loads(result.stdout)["metrics"]
    test = json.loads((run / "report/test/metrics.json").read_text())
    assert set(heldout["sources"]) == set(test["sources"])
    assert (run / "report/heldout/report.md").is_file() and (
        run / "report/test/report.md"
    ).is_file()
    result = cli("run", "--preset", "quick", "--run-dir", run, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    ran = [
        i["stage"]
        for i in json.loads(result.stdout)["metrics"]["stages"]
        if i["status"] != "current"
    ]
    assert ran == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("--preset", "nosuch"), "--preset"), (("--force", "trian-vae"), "--force")],
)
def test_bad_run_input(tmp_path, args, needle):
    result = cli("run", "--run-dir", tmp_path / "run", *args)
    assert result.exit_code != 0 and needle in result.stderr and args[1] in result.stderr
    assert not (tmp_path / "run").exists()


def _activated_venv() -> dict[str, str]:
    """Nothing when the repository has .venv/bin/geovq (make install); else what
    `source .venv/bin/activate` sets for the venv running the tests, the README's other way."""
    if (ROOT / ".venv/bin/geovq").exists():
        return {}
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "geovq").exists():
        pytest.skip("no .venv/bin/geovq here and no geovq beside this python: run make install")
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(bin_dir.parent),
    }


def test_example_without_geovq_says_how_to_get_it(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # a checkout without .venv
    env = {k: v for k, v in os.environ.items() if k != "GEOVQ"} | {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["bash", str(tmp_path / "examples/k_sweep.sh"), str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "make install" in done.stderr and "source .venv/bin/activate" in done.stderr
    assert not (tmp_path / "run").exists()


def test_example_script_runs_as_written(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "GEOVQ"},
        **_activated_venv(),
        "K": "16",
        "GEOVQ_DATA__LIMIT": "64",
        "GEOVQ_VAE__EPOCHS": "1",
        "GEOVQ_VQVAE__EPOCHS": "1",
        "GEOVQ_PRIOR__EPOCHS": "1",
        "GEOVQ_REFIT__EPOCHS": "1",
        "GEOVQ_COMPARE__SAMPLES": "32",
        "GEOVQ_COMPARE__CLASSIFIER_EPOCHS": "1",
        "GEOVQ_DEVICE": "cpu",
    }
    script = ROOT / "examples/mnist5k_pipeline.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "run")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run/report/test/metrics.json").is_file()


def _write_rgb_shapes(root, per_class, size=32):
    """Coloured discs and squares on coloured backgrounds: an RGB ImageFolder, 2 classes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for kind in ("disc", "square"):
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            background, colour = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in "ab")
            image = Image.new("RGB", (size, size), background)
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            box = [x, y, x + size // 2, y + size // 2]
            draw = ImageDraw.Draw(image)
            (draw.ellipse if kind == "disc" else draw.rectangle)(box, fill=colour)
            image.save(root / kind / f"{i}.png")


def test_quick_preset_runs_on_rgb_images(tmp_path, monkeypatch):
    _write_rgb_shapes(tmp_path / "rgb", per_class=40)  # 32 train + 8 test per class
    # Sampling 8x8 code grids is sequential: fewer samples keep the test to seconds.
    monkeypatch.setenv("GEOVQ_SAMPLE__N", "8")
    monkeypatch.setenv("GEOVQ_COMPARE__SAMPLES", "8")
    run = tmp_path / "run"
    args = ("run", "--preset", "quick", "--dataset", f"folder:{tmp_path / 'rgb'}", "--limit", "16")
    result = cli(*args, "--trunk", "residual", "--run-dir", run, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    # The VQ-VAE's grid is the 32x32 trunk's 8x8 map, paired with the spatial VAE's codes.
    vqvae = manifest["stages"]["train-vqvae/vqvae-8x8-k32"]
    assert vqvae["metrics"]["trunk"] == "residual"  # the VAEs', without being told again
    assert manifest["stages"]["train-vae/spatial"]["settings"]["vae"]["trunk"] == "residual"
    report = json.loads((run / "report/test/metrics.json").read_text())
    pairs = {(p["posthoc"], p["vqvae"]) for p in report["equal_rate_pairs"]}
    assert ("quant/w2-k32-spatial", "vqvae/vqvae-8x8-k32") in pairs
    assert (run / "report/test/reconstructions.png").is_file()
    codes = load_file(run / "vqvae/vqvae-8x8-k32/codes.safetensors")
    assert codes["test.codes"].shape == (16, 8, 8)


def _planned(tmp_path, **study):
    from geovq.settings import load_settings
    from geovq.stages.pipeline import PRESETS, plan

    settings = load_settings(
        {"run_dir": tmp_path / "run", "study": study}, presets=PRESETS, preset_name=None
    )
    return {step.key: step for step in plan(settings)}


def test_the_transform_code_gets_a_wider_spatial_vae_at_the_same_rate(tmp_path):
    steps = _planned(tmp_path)
    narrow = steps["train-vae/spatial"].settings.vae
    wide = steps["train-vae/spatial4"].settings.vae
    assert (narrow.spatial_channels, wide.spatial_channels) == (2, 4)
    assert wide.target_rate == narrow.target_rate == 392.0
    assert wide.rate_chunks == narrow.rate_chunks == 49 and wide.epochs == narrow.epochs
    assert steps["quantize/transform-k256-spatial4"].deps == ["extract/spatial4"]
    assert steps["quantize/transform-k256-spatial4"].settings.vae.name == "spatial4"
    assert "quantize/transform-k256-spatial" not in steps
    assert "quantize/w2-k256-spatial4" not in steps and "quantize/w2-k256-spatial" in steps
    assert "refit-decoder/transform-k256-spatial4" in steps and "quantize/transform-k256" in steps
    # one spatial VAE when the transform code wants its channels
    same = _planned(tmp_path, transform_channels=2)
    assert "train-vae/spatial4" not in same and "quantize/transform-k256-spatial" in same
