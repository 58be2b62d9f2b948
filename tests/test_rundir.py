import hashlib
import json
import os

import pytest
import torch

from geovq import GeovqError
from geovq.artifacts import Reader
from geovq.rundir import RunDir, StageRecord, atomic_write_bytes


def test_tensors_round_trip_with_metadata_and_sha(tmp_path):
    run = RunDir(tmp_path)
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    info = run.save_tensors("x/y.safetensors", tensors, {"config": '{"k": 1}'})
    loaded, metadata = run.load_tensors("x/y.safetensors", "thing")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    assert metadata == {"config": '{"k": 1}'}
    expected = hashlib.sha256(run.file("x/y.safetensors").read_bytes()).hexdigest()
    assert info["sha256"] == expected == run.sha256("x/y.safetensors")
    assert info["shapes"] == {"a": [2, 3], "b": [2]}


def test_manifest_round_trip(tmp_path):
    run = RunDir(tmp_path)
    run.save_tensors("t.safetensors", {"w": torch.ones(2)})
    record = StageRecord(
        stage="demo",
        settings={"k": 3},
        outputs={"t.safetensors": {"sha256": run.sha256("t.safetensors"), "shapes": {}}},
        metrics={"mse": 0.5},
        seed=4,
    )
    run.record(record)
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["schema_version"] == 2
    expected = {"geovq", "torch", "torchvision", "numpy", "cuda", "python"}
    assert set(manifest["versions"]) - {"git_commit"} == expected
    assert manifest["stages"]["demo"]["metrics"] == {"mse": 0.5}
    assert RunDir(tmp_path).stage("demo")["seed"] == 4
    assert run.outputs_current("demo")
    run.save_tensors("t.safetensors", {"w": torch.zeros(2)})
    assert not run.outputs_current("demo")


def test_changed_input_is_refused_unless_forced(tmp_path):
    run = RunDir(tmp_path)
    info = run.save_tensors("in.safetensors", {"w": torch.ones(2)})
    run.record(StageRecord(stage="make", settings={}, outputs={"in.safetensors": info}))
    Reader(run).read("in.safetensors", "make", "input")
    run.save_tensors("in.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(GeovqError, match="changed since"):
        Reader(run).read("in.safetensors", "make", "input")
    tensors, _ = Reader(run, force=True).read("in.safetensors", "make", "input")
    assert torch.equal(tensors["w"], torch.zeros(2))


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary left behind


def test_truncated_file_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    run.save_tensors("m.safetensors", {"w": torch.ones(100)})
    data = run.file("m.safetensors").read_bytes()
    run.file("m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GeovqError, match="corrupted or truncated"):
        run.load_tensors("m.safetensors", "model")


def test_missing_file_names_the_stage_to_run(tmp_path):
    with pytest.raises(GeovqError, match="geovq train-vae"):
        Reader(RunDir(tmp_path)).read("vae.safetensors", "train-vae", "trained VAE")


# -- the lock, staging and all-or-nothing commits ----------------------------------------------
import errno  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.helpers import cli, tree_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def geovq_process(*args, env_extra=None):
    """A real ``geovq`` process (not in-process): for races and kills."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    command = [sys.executable, "-m", "geovq", *map(str, args)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def visible_digest(run) -> dict[str, str]:
    """The run as users and stages see it: without the lock file and staging folders."""
    return {k: v for k, v in tree_digest(run).items() if not k.startswith((".staging", ".lock"))}


def test_two_processes_with_different_outputs_both_land(tiny_run):
    base = ("quantize", "--run-dir", tiny_run, "--k", "4", "--device", "cpu", "-q")
    processes = [geovq_process(*base, "--name", name) for name in ("a", "b")]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    run = RunDir(tiny_run)
    assert {"quantize/a", "quantize/b"} <= set(run.manifest()["stages"])
    assert run.outputs_current("quantize/a") and run.outputs_current("quantize/b")


def test_two_processes_writing_the_same_output_one_refuses(tiny_run):
    base = ("quantize", "--run-dir", tiny_run, "--name", "same", "--device", "cpu", "-q")
    processes = [geovq_process(*base, "--k", k) for k in ("4", "8")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refusal = next(stderr for code, stderr in results if code == 2)
    assert len(refusal.strip().splitlines()) == 1 and "Traceback" not in refusal
    run = RunDir(tiny_run)
    assert run.outputs_current("quantize/same")  # the files are the recorded winner's
    assert not (tiny_run / ".staging").exists()


@pytest.mark.parametrize("point", ["before-commit", "after-journal", "mid-commit"])
def test_kill_during_commit_leaves_old_or_new_state_never_a_mix(tiny_run, point):
    before = visible_digest(tiny_run)
    args = ("quantize", "--run-dir", tiny_run, "--k", "4", "--name", "f2", "--device", "cpu")
    process = geovq_process(*args, "-q", env_extra={"GEOVQ_FAULT_INJECT": point})
    process.communicate(timeout=300)
    assert process.returncode == -9  # killed like kill -9
    assert (tiny_run / ".staging").is_dir()  # what the killed process left
    if point == "before-commit":
        assert visible_digest(tiny_run) == before  # the previous state, byte for byte
    # The next stage cleans up (or finishes the journaled commit) first, and says so.
    result = cli("quantize", "--run-dir", tiny_run, "--k", "4", "--name", "other", "--json")
    assert result.exit_code == 0, result.stderr
    notes = " ".join(json.loads(result.stdout)["notes"])
    assert not (tiny_run / ".staging").exists()
    run = RunDir(tiny_run)
    if point == "before-commit":
        assert "removed unfinished outputs of quantize/f2" in notes
        assert "quantize/f2" not in run.manifest()["stages"]
        assert not (tiny_run / "quant/f2").exists()
    else:
        assert "finished the interrupted commit of quantize/f2" in notes
        assert run.outputs_current("quantize/f2")


def test_sigterm_mid_write_leaves_no_temporary_and_says_one_line(tiny_run):
    before = visible_digest(tiny_run)
    args = ("train-vae", "--run-dir", tiny_run, "--vae", "t", "--epochs", "1", "--device", "cpu")
    process = geovq_process(*args, "-q", env_extra={"GEOVQ_FAULT_INJECT": "term-while-writing"})
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr  # stopped like Ctrl-C, not killed by the signal
    assert stderr.splitlines() == [
        "geovq: error: train-vae --vae t interrupted before its first epoch ended; nothing was "
        "kept, so rerun without --resume"
    ]
    assert not list(tiny_run.rglob("*.tmp"))  # the checkpoint's temporary file went with it
    assert not (tiny_run / ".staging").exists()
    # only the epoch's training log, written as training goes, is new
    after = {k: v for k, v in visible_digest(tiny_run).items() if not k.startswith("logs/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("logs/")}


def test_sigterm_after_the_journal_finishes_the_commit(tiny_run):
    args = ("quantize", "--run-dir", tiny_run, "--k", "4", "--name", "t", "--device", "cpu")
    process = geovq_process(*args, "-q", env_extra={"GEOVQ_FAULT_INJECT": "term-after-journal"})
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr  # 128 + SIGTERM
    assert stderr.splitlines() == [
        "geovq: error: terminated (SIGTERM); nothing half-written was left in the run directory"
    ]
    assert not (tiny_run / ".staging").exists()  # held back until the commit was whole
    assert RunDir(tiny_run).outputs_current("quantize/t")


def test_stale_tmp_of_a_killed_write_is_removed_and_said(tiny_run):
    stale = tiny_run / "checkpoints" / ".train-vae.safetensors.999999-0123abcd.tmp"
    stale.write_bytes(b"x" * 100)
    result = cli("quantize", "--run-dir", tiny_run, "--k", "4", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert not stale.exists()
    assert any("left by a killed write" in n for n in json.loads(result.stdout)["notes"])


BAD_MANIFESTS = [b"{}", b"[]", b'{"schema_version": 2, "stages": {"train-vae": "x"}}',
                 b"\xff\xfe not utf-8", b"garbage{", b'{"schema_version": 2, "stages": []}',
                 b'{"schema_version": 9, "stages": {}}',
                 b'{"schema_version": 2, "stages": {"e": {"outputs": {"../x": {"sha256": ""}}}}}',
                 ]  # fmt: skip


@pytest.mark.parametrize("text", BAD_MANIFESTS)
def test_a_broken_manifest_is_one_line_before_any_work(tiny_run, text):
    (tiny_run / "manifest.json").write_bytes(text)
    before = tree_digest(tiny_run)
    for args in (("train-vae", "--limit", "8", "--epochs", "1"), ("quantize", "--k", "4")):
        result = cli(args[0], "--run-dir", tiny_run, "--device", "cpu", *args[1:])
        assert result.exit_code == 2 and "manifest" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert tree_digest(tiny_run) == before


def test_full_disk_is_one_line_and_changes_nothing(tiny_run, monkeypatch):
    before = tree_digest(tiny_run)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    result = cli("quantize", "--run-dir", tiny_run, "--k", "4", "--device", "cpu", "-q")
    assert result.exit_code == 2 and "disk is full" in result.stderr, result.stderr
    assert str(tiny_run) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(tiny_run) == before


def test_read_only_run_dir_is_one_line_before_any_work(tiny_run, monkeypatch):
    # Tests run as root, for whom chmod does not stop writes: simulate a read-only mount.
    before = tree_digest(tiny_run)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tiny_run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    args = ("--limit", "8", "--epochs", "1", "--force", "-q")
    result = cli("train-vae", "--run-dir", tiny_run, *args)
    assert result.exit_code == 2 and "read-only" in result.stderr, result.stderr
    assert str(tiny_run) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(tiny_run) == before


def test_manifest_is_strict_json_with_null_for_missing_figures(tmp_path):
    run = RunDir(tmp_path)
    run.record(StageRecord(stage="s", settings={}, metrics={"loss": float("nan"), "x": [1.0]}))
    text = run.manifest_path.read_text()
    assert "NaN" not in text
    assert json.loads(text, parse_constant=pytest.fail)["stages"]["s"]["metrics"]["loss"] is None
