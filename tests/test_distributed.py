"""geovq/distributed.py: two gloo processes under torchrun train like one process on the
same global batch, and leave the same run directory (rank 0 alone writes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import cli

SOURCE = "quant/w2-k8"
PRIOR = f"prior/{SOURCE.replace('/', '-')}.safetensors"
TIMINGS = {"wall_time_s", "started", "finished", "images_per_s", "codes_per_s", "sha256"}


def _without(value, keys=TIMINGS):
    """A manifest record without timings and hashes (floats rounded to float tolerance)."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


def _artifacts(run: Path) -> set[Path]:
    """The run's files, without its hidden bookkeeping (lock, staging)."""
    files = {p.relative_to(run) for p in run.rglob("*") if p.is_file()}
    return {p for p in files if not any(part.startswith(".") for part in p.parts)}


def _prior_args(run: Path) -> list[str]:
    args = ["train-prior", "--run-dir", str(run), "--device", "cpu", "--source", SOURCE]
    return args + ["--epochs", "1", "--batch-size", "32", "--layers", "2", "--hidden", "16", "-q"]


def _torchrun(args: list[str], processes: int) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *launcher, "-m", "geovq", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def quantized_run(tiny_run_template, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    shutil.copytree(tiny_run_template, run)
    result = cli("quantize", "--run-dir", run, "--device", "cpu", "--metric", "w2", "--k", "8")
    assert result.exit_code == 0, result.stderr
    return run


def test_two_processes_train_like_one(quantized_run, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    shutil.copytree(quantized_run, single)
    shutil.copytree(quantized_run, double)
    one = cli(*_prior_args(single))
    assert one.exit_code == 0, one.stderr
    two = _torchrun(_prior_args(double), processes=2)
    assert two.returncode == 0, two.stderr[-2000:]

    assert _artifacts(single) == _artifacts(double)
    for name in (PRIOR, PRIOR.replace("prior/", "checkpoints/prior-")):
        one, two = load_file(single / name), load_file(double / name)
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    key = f"train-prior/{SOURCE.replace('/', '-')}"
    records = [
        json.loads((run / "manifest.json").read_text())["stages"] for run in (single, double)
    ]
    assert _without(records[0]) == _without(records[1])
    history = records[1][key]["metrics"]["history"][0]
    assert history["train_bits_per_code"] == pytest.approx(
        records[0][key]["metrics"]["history"][0]["train_bits_per_code"], rel=1e-5
    )
