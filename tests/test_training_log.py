"""Training curves: RUN/logs/<stage>.jsonl always, TensorBoard event files with --log
tensorboard, read back with tensorboard's own reader."""

from __future__ import annotations

import json

import pytest

from geovq.rundir import RunDir
from geovq.training_log import scalar_tag
from tests.helpers import cli

TINY = ("--device", "cpu", "--limit", "64", "-q")


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_always_one_line_per_epoch_and_resume_appends(tmp_path):
    run = tmp_path / "run"
    assert cli("train-vae", "--run-dir", run, *TINY, "--epochs", "1").exit_code == 0
    assert [line["epoch"] for line in _lines(run / "logs/train-vae.jsonl")] == [1]
    resumed = cli("train-vae", "--run-dir", run, *TINY, "--epochs", "2", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    lines = _lines(run / "logs/train-vae.jsonl")
    history = RunDir(run).stage("train-vae")["metrics"]["history"]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert [{k: v for k, v in line.items() if k != "lr"} for line in lines] == history
    assert all(line["lr"] == pytest.approx(1e-3) for line in lines)
    assert not (run / "logs/tb").exists()


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = cli("train-vae", "--run-dir", run, *TINY, "--epochs", "2", "--log", "tensorboard")
    assert result.exit_code == 0, result.stderr
    lines = _lines(run / "logs/train-vae.jsonl")
    events = EventAccumulator(str(run / "logs/tb/train-vae"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("train_loss", "train_kl", "test_loss", "test_mse_per_pixel", "lr", "images_per_s"):
        scalars = events.Scalars(scalar_tag(key))
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([line[key] for line in lines])
    assert "train/lr" in tags["scalars"] and "speed/images_per_s" in tags["scalars"]
    images = events.Images("reconstructions")
    assert [image.step for image in images] == [1, 2]  # the first and the last epoch
    assert images[0].width == 8 * 30 + 2 and images[0].height == 2 * 30 + 2  # 2 rows of 8


def test_scalar_tags():
    assert scalar_tag("train_loss") == "train/loss"
    assert scalar_tag("test_mse_per_pixel") == "test/mse_per_pixel"
    assert scalar_tag("images_per_s") == "speed/images_per_s"
