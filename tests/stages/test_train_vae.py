import json

import pytest
import torch
from safetensors.torch import load_file

from geovq.rundir import RunDir
from tests.helpers import cli, snapshot

TINY = ("--limit", "32", "--epochs", "1", "--device", "cpu")


def test_train_vae_then_extract_shapes(tmp_path):
    run = tmp_path / "run"
    result = cli("train-vae", "--run-dir", run, *TINY, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert payload["schema_version"] == 1 and payload["stage"] == "train-vae"
    assert payload["metrics"]["test_mse_per_pixel"] > 0
    assert cli("extract", "--run-dir", run, "--quiet").exit_code == 0
    latents = load_file(run / "latents.safetensors")
    assert latents["train.mu"].shape == (32, 32) and latents["test.logvar"].shape == (32, 32)
    assert latents["train.labels"].dtype == torch.int64
    manifest = json.loads((run / "manifest.json").read_text())
    vae = manifest["stages"]["train-vae"]
    assert vae["settings"]["data"]["limit"] == 32
    assert vae["outputs"]["vae.safetensors"]["sha256"]
    assert (
        manifest["stages"]["extract"]["inputs"]["vae.safetensors"]
        == vae["outputs"]["vae.safetensors"]["sha256"]
    )


def test_extract_is_deterministic(tiny_run):
    before = (tiny_run / "latents.safetensors").read_bytes()
    assert cli("extract", "--run-dir", tiny_run, "-q").exit_code == 0
    assert (tiny_run / "latents.safetensors").read_bytes() == before


def test_extract_as_adds_a_split_and_keeps_it(tiny_run, tmp_path):
    from tests.test_data import _write_pngs

    _write_pngs(tmp_path / "ext", size=(20, 20), per_class=3)
    result = cli(
        "extract",
        "--run-dir",
        tiny_run,
        "--dataset",
        f"folder:{tmp_path / 'ext'}",
        "--as",
        "ext",
        "--force",  # latents.safetensors is rewritten with one more split
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    latents = load_file(tiny_run / "latents.safetensors")
    assert latents["ext.mu"].shape == (6, 32)  # resized to 28x28, every image
    assert cli("extract", "--run-dir", tiny_run, "-q").exit_code == 0
    assert "ext.mu" in load_file(tiny_run / "latents.safetensors")


def test_spatial_latent_extracts_with_grid(tmp_path):
    run = tmp_path / "run"
    assert cli("train-vae", "--run-dir", run, *TINY, "--latent", "spatial", "-q").exit_code == 0
    assert cli("extract", "--run-dir", run, "-q").exit_code == 0
    tensors, metadata = RunDir(run).load_tensors("latents.safetensors", "latents")
    assert metadata["grid"] == [7, 7]
    assert tensors["train.mu"].shape == (32, 196)


def test_info_table_and_json(tiny_run):
    table = cli("info", "--run-dir", tiny_run)
    assert table.exit_code == 0 and "train-vae" in table.stdout and "extract" in table.stdout
    info = json.loads(cli("info", "--run-dir", tiny_run, "--json").stdout)
    assert info["metrics"]["stages"]["extract"]["current"] is True
    (tiny_run / "latents.safetensors").write_bytes(b"changed")
    info = json.loads(cli("info", "--run-dir", tiny_run, "--json").stdout)
    assert info["metrics"]["stages"]["extract"]["current"] is False


def test_resume_continues_to_the_same_weights(tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    assert cli("train-vae", "--run-dir", straight, *TINY[:2], "--epochs", "2", "-q").exit_code == 0
    assert cli("train-vae", "--run-dir", split, *TINY[:2], "--epochs", "1", "-q").exit_code == 0
    assert (
        cli("train-vae", "--run-dir", split, *TINY[:2], "--epochs", "2", "--resume", "-q").exit_code
        == 0
    )
    a, b = load_file(straight / "vae.safetensors"), load_file(split / "vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


BAD_TRAIN = [
    (("--dataset", "mnist6k"), "unknown dataset 'mnist6k'"),
    (("--dataset", "folder:/no/such/dir"), "/no/such/dir"),
    (("--epochs", "0"), "--epochs"),
    (("--lr", "-0.1"), "--lr"),
    (("--device", "cuda"), "--device cuda"),
    (("--resume",), "no checkpoint"),
    (("--latent", "blob"), "--latent"),
    (("--target-rate", "64", "--rate-chunks", "5"), "--rate-chunks 5 does not divide"),
    (("--rate-chunks", "8"), "--rate-chunks needs --target-rate"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_TRAIN)
def test_bad_train_input(tiny_run, args, needle):
    if args == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    if args == ("--resume",):
        for path in (tiny_run / "checkpoints").iterdir():
            path.unlink()
    before = snapshot(tiny_run)
    result = cli("train-vae", "--run-dir", tiny_run, "--limit", "8", *args)
    assert result.exit_code != 0
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert snapshot(tiny_run) == before


def test_commands_on_a_directory_without_a_vae(tmp_path):
    for command in ("extract", "info"):
        result = cli(command, "--run-dir", tmp_path / "empty")
        assert result.exit_code != 0 and "geovq train-vae" in result.stderr
    assert not (tmp_path / "empty").exists()


def test_corrupted_vae(tiny_run):
    data = (tiny_run / "vae.safetensors").read_bytes()
    (tiny_run / "vae.safetensors").write_bytes(data[:1000])
    before = snapshot(tiny_run)
    result = cli("extract", "--run-dir", tiny_run, "--force")
    assert result.exit_code != 0 and "corrupted or truncated" in result.stderr
    assert snapshot(tiny_run) == before


def test_changed_vae_is_refused_without_force(tiny_run):
    run = RunDir(tiny_run)
    weights, metadata = run.load_tensors("vae.safetensors", "vae")
    weights["decoder.net.0.bias"] += 1
    run.save_tensors("vae.safetensors", weights, metadata)
    result = cli("extract", "--run-dir", tiny_run)
    assert result.exit_code != 0 and "changed since" in result.stderr
    assert cli("extract", "--run-dir", tiny_run, "--force", "-q").exit_code == 0


@pytest.mark.parametrize(
    ("toml", "needle"),
    [("[vae]\nepochz = 1\n", "vae.epochz"), ("[vae]\nepochs = 'x'\n", "bad.toml (key vae.epochs)")],
)
def test_bad_config_file(tmp_path, toml, needle):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = cli("train-vae", "--run-dir", tmp_path / "run", "--config", config)
    assert result.exit_code != 0 and needle in result.stderr
    assert not (tmp_path / "run").exists()


def test_named_vaes_live_side_by_side(tiny_run):
    base = ("--run-dir", tiny_run, "--device", "cpu", "-q")
    flat_latents = (tiny_run / "latents.safetensors").read_bytes()
    args = (
        "train-vae",
        *base,
        "--limit",
        "16",
        "--epochs",
        "1",
        "--vae",
        "spatial",
        "--latent",
        "spatial",
    )
    assert cli(*args).exit_code == 0
    assert cli("extract", *base, "--vae", "spatial").exit_code == 0
    assert (tiny_run / "latents.safetensors").read_bytes() == flat_latents
    latents, _ = RunDir(tiny_run).load_tensors("latents-spatial.safetensors", "latents")
    assert latents["train.mu"].shape == (16, 196)
    stages = RunDir(tiny_run).manifest()["stages"]
    assert {"train-vae", "train-vae/spatial", "extract", "extract/spatial"} <= set(stages)


def test_ctrl_c_exits_130_and_keeps_the_last_epoch(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "geovq", "train-vae", "--run-dir", str(run)]
    command += ["--limit", "64", "--epochs", "200", "--device", "cpu", "-q"]
    # A shell that starts the suite in the background ignores SIGINT in its children; the
    # child must see Ctrl-C as a terminal user's process would.
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = run / "checkpoints/train-vae.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not (run / "vae.safetensors").exists() and not (run / "manifest.json").exists()
    _, metadata = RunDir(run).load_tensors("checkpoints/train-vae.safetensors", "checkpoint")
    assert int(metadata["epoch"]) >= 1


def test_train_vae_on_fashion_mnist_names_the_files_it_read(tmp_path, monkeypatch):
    from geovq import data
    from tests.test_data import _write_fashion_files

    system = tmp_path / "fashion-mnist"
    _write_fashion_files(system, {"train": 20, "t10k": 10}, compress=True)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"fashion-mnist": system})
    monkeypatch.chdir(tmp_path)  # the default --data-dir (./data) holds nothing
    run = tmp_path / "run"
    result = cli("train-vae", "--run-dir", run, "--dataset", "fashion-mnist", *TINY[2:], "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert any(str(system) in note for note in payload["notes"])
    assert payload["metrics"]["data_files"][0] == str(system / "train-images-idx3-ubyte.gz")
    table = cli(
        "train-vae", "--run-dir", tmp_path / "run2", "--dataset", "fashion-mnist", *TINY[2:]
    )
    assert "train-images-idx3-ubyte.gz" in table.stdout


def test_target_rate_records_beta_and_the_achieved_rate(tmp_path):
    from geovq.stages import train_vae
    from tests.helpers import tiny_settings

    settings = tiny_settings(
        tmp_path / "run", vae={"epochs": 2, "target_rate": 500.0, "rate_gain": 0.05}
    )
    result = train_vae.run(settings)
    history = result.metrics["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    # the KL starts far below 500 bits, so beta falls below its starting 1 every epoch
    assert 1.0 > history[0]["beta"] > history[1]["beta"] > 0
    assert result.metrics["target_rate_bits"] == 500.0
    assert result.metrics["test_bits"] == pytest.approx(history[-1]["test_kl"] / 0.6931471805599453)
    # resuming restores beta from the checkpoint, so two more epochs continue the same descent
    resumed = train_vae.run(
        settings.model_copy(
            update={"vae": settings.vae.model_copy(update={"epochs": 3, "resume": True})}
        )
    )
    assert resumed.metrics["history"][-1]["beta"] < history[1]["beta"]


def test_rate_chunks_hold_one_beta_per_position(tmp_path):
    """A spatial VAE with --rate-chunks = its positions keeps one beta per position, each
    moved by its own position's KL, and resumes them all."""
    from geovq.stages import train_vae
    from tests.helpers import tiny_settings

    vae = {"epochs": 1, "target_rate": 64.0, "rate_chunks": 49, "latent": "spatial"}
    vae["spatial_channels"] = 2
    settings = tiny_settings(tmp_path / "run", vae=vae)
    history = train_vae.run(settings).metrics["history"]
    betas = history[-1]["betas"]
    assert len(betas) == 49 and len(history[-1]["kl_emas"]) == 49
    assert len(set(betas)) > 1  # positions carry different KL, so their betas part
    assert history[-1]["beta"] == pytest.approx(sum(betas) / 49)
    more = settings.vae.model_copy(update={"epochs": 2, "resume": True})
    resumed = train_vae.run(settings.model_copy(update={"vae": more})).metrics["history"]
    assert len(resumed) == 2 and resumed[0]["betas"] == betas
