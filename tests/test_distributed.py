"""geovq/distributed.py: two gloo processes under torchrun train like one process on the same
global batch, resume, shard extract, and leave the run directory a single process would
(rank 0 alone writes); a rank that fails stops every rank and leaves the run as it was."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import cli, tree_digest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "quant/w2-k8"
KEY = f"train-prior/{SOURCE.replace('/', '-')}"
PRIOR = f"prior/{SOURCE.replace('/', '-')}.safetensors"
CHECKPOINT = f"checkpoints/prior-{SOURCE.replace('/', '-')}.safetensors"
CURVES = f"logs/{KEY}.jsonl"
# what differs between two runs of the same stage: clocks, and hashes of files holding them
TIMINGS = {"wall_time_s", "started", "finished", "images_per_s", "codes_per_s", "sha256"}
TORCHRUN_TIMEOUT_S = 120  # a hang must fail the test, not stall the suite


def _without_timings(value):
    """A record without timings and hashes, floats rounded to float tolerance."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


def _files(run: Path) -> set[Path]:
    """The run's files without the hidden bookkeeping (lock, staging)."""
    files = {p.relative_to(run) for p in run.rglob("*") if p.is_file()}
    return {p for p in files if not any(part.startswith(".") for part in p.parts)}


def _stages(run: Path) -> dict:
    return _without_timings(json.loads((run / "manifest.json").read_text())["stages"])


def _curves(run: Path) -> list[dict]:
    lines = (run / CURVES).read_text().splitlines()
    return [_without_timings(json.loads(line)) for line in lines]


def _assert_same_tensors(one: Path, two: Path) -> None:
    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(b[key], a[key]), key


def _assert_same_runs(single: Path, double: Path) -> None:
    assert _files(single) == _files(double)
    assert _stages(single) == _stages(double)
    assert _curves(single) == _curves(double)
    for name in (PRIOR, CHECKPOINT):
        _assert_same_tensors(single / name, double / name)


def _prior(run: Path, epochs: int, *extra: str) -> list[str]:
    args = ["train-prior", "--run-dir", str(run), "--device", "cpu", "--source", SOURCE]
    sizes = ["--batch-size", "32", "--layers", "2", "--hidden", "16"]
    return args + sizes + ["--epochs", str(epochs), "-q", *extra]


def torchrun(args: list[str], processes: int = 2, **env: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (its rendezvous on a free port) running geovq from this tree,
    one thread per process; on a timeout the whole process group is killed, workers included."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env}
    process = subprocess.Popen(
        [sys.executable, *launcher, "-m", "geovq", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun hung for {TORCHRUN_TIMEOUT_S} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def quantized_run(tiny_run_template, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    shutil.copytree(tiny_run_template, run)
    result = cli("quantize", "--run-dir", run, "--device", "cpu", "--metric", "w2", "--k", "8")
    assert result.exit_code == 0, result.stderr
    return run


def test_two_processes_train_and_resume_like_one(quantized_run, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    shutil.copytree(quantized_run, single)
    shutil.copytree(quantized_run, double)

    one = cli(*_prior(single, 1))
    assert one.exit_code == 0, one.stderr
    two = torchrun(_prior(double, 1))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("train-prior") == 1  # rank 0 alone prints the result
    _assert_same_runs(single, double)

    one = cli(*_prior(single, 2, "--resume"))
    assert one.exit_code == 0, one.stderr
    two = torchrun(_prior(double, 2, "--resume"))
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_runs(single, double)
    assert [r["epoch"] for r in _curves(double)] == [1, 2]


def test_two_processes_extract_like_one(tiny_run_template, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_template, run)
    result = torchrun(["extract", "--run-dir", str(run), "--device", "cpu", "--force", "-q"])
    assert result.returncode == 0, result.stderr[-3000:]

    assert _files(run) == _files(tiny_run_template)
    assert _stages(run) == _stages(tiny_run_template)
    one, two = (
        load_file(tiny_run_template / "latents.safetensors"),
        load_file(run / "latents.safetensors"),
    )
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)


def test_a_failing_rank_stops_every_rank_and_writes_nothing(quantized_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quantized_run, run)
    before = tree_digest(run)
    # rank 1 fails after training, as rank 0 is about to commit
    result = torchrun(_prior(run, 1), GEOVQ_FAULT_INJECT="rank-1-fails")

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("geovq: error:")]
    assert "geovq: error: rank 1/2: rank 1 failed on purpose (GEOVQ_FAULT_INJECT)" in errors
    assert len(errors) <= 2  # one line per rank (torchrun may stop rank 0 before it says one)
    assert "geovq/" not in result.stderr  # no traceback of ours
    after = tree_digest(run)
    # as a single process failing there: manifest and artifacts as they were; the epoch's
    # checkpoint and curves, written as training goes, are kept for --resume. torchrun stops
    # rank 0 with SIGTERM, which geovq turns into an interrupt: no half-written temporary file
    # is left, but a staging folder may be (the next stage removes it) if rank 0 is stopped
    # before its own cleanup starts.
    kept = (CHECKPOINT, CURVES, "logs/train-prior", ".lock", ".staging")
    assert _without(after, kept) == _without(before, kept)
    assert not [path for path in after if path.endswith(".tmp")]


def _without(digest: dict[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    return {path: value for path, value in digest.items() if not path.startswith(prefixes)}
