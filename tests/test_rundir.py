import hashlib
import json
import os

import pytest
import torch

from geovq import GeovqError
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
    assert manifest["schema_version"] == 1
    assert set(manifest["versions"]) == {"geovq", "torch", "python"}
    assert manifest["stages"]["demo"]["metrics"] == {"mse": 0.5}
    assert RunDir(tmp_path).stage("demo")["seed"] == 4
    assert run.outputs_current("demo")
    run.save_tensors("t.safetensors", {"w": torch.zeros(2)})
    assert not run.outputs_current("demo")


def test_changed_input_is_refused_unless_forced(tmp_path):
    run = RunDir(tmp_path)
    info = run.save_tensors("in.safetensors", {"w": torch.ones(2)})
    run.record(StageRecord(stage="make", settings={}, outputs={"in.safetensors": info}))
    run.check_current("in.safetensors", "make", force=False)
    run.save_tensors("in.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(GeovqError, match="changed since"):
        run.check_current("in.safetensors", "make", force=False)
    run.check_current("in.safetensors", "make", force=True)


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
        RunDir(tmp_path).load_tensors("vae.safetensors", "trained VAE")
