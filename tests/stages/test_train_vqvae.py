import json

import pytest
import torch

from geovq.data import to_float
from geovq.models.vqvae import VQVAE, VQVAEConfig
from geovq.rundir import RunDir
from tests.helpers import cli, snapshot

TINY = ("--epochs", "1", "--device", "cpu", "--init", "random", "-q")


@pytest.mark.parametrize(("grid", "shape"), [("2x4", (2, 4)), ("7x7", (7, 7))])
def test_grids_and_saved_codes_are_the_argmin(tiny_run, grid, shape):
    result = cli("train-vqvae", "--run-dir", tiny_run, "--grid", grid, "--k", "16", *TINY)
    assert result.exit_code == 0, result.stderr
    run = RunDir(tiny_run)
    name = f"vqvae/vqvae-{grid}-k16"
    codes, meta = run.load_tensors(f"{name}/codes.safetensors", "codes")
    assert codes["train.codes"].shape == (64, *shape) and codes["test.codes"].dtype == torch.int64
    assert meta["grid"] == list(shape) and meta["kind"] == "vqvae"
    weights, model_meta = run.load_tensors(f"{name}/model.safetensors", "model")
    model = VQVAE(VQVAEConfig(**model_meta["config"]))
    model.load_state_dict(weights)
    codebook = run.load_tensors(f"{name}/codebook.safetensors", "codebook")[0]["codebook"]
    from geovq.data import load_dataset
    from geovq.settings import DataSettings

    images = to_float(load_dataset(DataSettings(limit=64)).splits["test"].images)
    with torch.no_grad():
        z_e = model.encode(images).double()
    brute = torch.cdist(z_e.reshape(-1, 4), codebook.double()).argmin(1).view(64, *shape)
    assert torch.equal(brute, codes["test.codes"])
    record = run.stage(f"train-vqvae/vqvae-{grid}-k16")
    assert record["metrics"]["bits_per_image"] == shape[0] * shape[1] * 4
    assert 0 < record["metrics"]["splits"]["test"]["utilisation"] <= 1


def test_deterministic(tiny_run):
    args = ("train-vqvae", "--run-dir", tiny_run, "--grid", "2x4", "--k", "8", *TINY)
    assert cli(*args).exit_code == 0
    first = (tiny_run / "vqvae/vqvae-2x4-k8/codes.safetensors").read_bytes()
    assert cli(*args, "--force").exit_code == 0
    assert (tiny_run / "vqvae/vqvae-2x4-k8/codes.safetensors").read_bytes() == first


def test_kmeans_init_uses_more_codes_than_random(tiny_run):
    def utilisation(init):
        result = cli(
            "train-vqvae", "--run-dir", tiny_run, "--grid", "2x4", "--k", "16", "--epochs", "1",
            "--init", init, "--codebook-update", "ema", "--dead-code-restart", "0",
            "--name", init, "--json", "--device", "cpu",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["metrics"]["splits"]["train"]["utilisation"]

    assert utilisation("kmeans") > utilisation("random")


def test_runs_without_a_vae_given_a_dataset(tmp_path):
    run = tmp_path / "run"
    base = ("train-vqvae", "--run-dir", run, "--grid", "2x4", "--k", "8", *TINY)
    result = cli(*base)
    assert result.exit_code != 0 and "--dataset" in result.stderr
    assert cli(*base, "--dataset", "mnist5k", "--limit", "16").exit_code == 0


BAD = [
    (("--grid", "14x14"), "14x14"),
    (("--grid", "7by7"), "7by7"),
    (("--k", "0"), "--k"),
    (("--codebook-update", "magic"), "--codebook-update"),
    (("--ema-decay", "1.5"), "--ema-decay"),
]


@pytest.mark.parametrize(("args", "needle"), BAD)
def test_bad_input(tiny_run, args, needle):
    before = snapshot(tiny_run)
    result = cli("train-vqvae", "--run-dir", tiny_run, *TINY, *args)
    assert result.exit_code != 0 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tiny_run) == before


def test_existing_name_needs_force(tiny_run):
    args = ("train-vqvae", "--run-dir", tiny_run, "--grid", "2x4", "--name", "x", *TINY)
    assert cli(*args, "--k", "8").exit_code == 0
    before = snapshot(tiny_run)
    assert cli(*args, "--k", "8").exit_code == 0  # identical: current, nothing rewritten
    assert snapshot(tiny_run) == before
    result = cli(*args, "--k", "4")
    assert result.exit_code != 0 and "--force" in result.stderr
    assert snapshot(tiny_run) == before


def test_the_baseline_uses_the_vae_trunk(tmp_path):
    from geovq import GeovqError
    from geovq.models.blocks import ResidualDecoderTrunk, ResidualEncoderTrunk
    from geovq.stages import train_vae, train_vqvae
    from tests.helpers import tiny_settings

    run_dir = tmp_path / "run"
    train_vae.run(tiny_settings(run_dir, vae={"trunk": "residual"}))
    vq = {"grid": "2x4", "k": 8, "epochs": 1, "init": "random"}
    train_vqvae.run(tiny_settings(run_dir, vqvae=vq))  # no trunk given: the VAE's
    run = RunDir(run_dir)
    weights, meta = run.load_tensors("vqvae/vqvae-2x4-k8/model.safetensors", "model")
    model = VQVAE(VQVAEConfig(**meta["config"]))
    model.load_state_dict(weights)  # the saved weights are a residual trunk's
    assert isinstance(model.encoder, ResidualEncoderTrunk)
    assert isinstance(model.decoder, ResidualDecoderTrunk)
    before = snapshot(run_dir)
    with pytest.raises(GeovqError, match="--trunk reference differs from the run's residual"):
        train_vqvae.run(tiny_settings(run_dir, vqvae={**vq, "trunk": "reference", "name": "b"}))
    assert snapshot(run_dir) == before


def test_fsq_writes_the_same_code_format_and_feeds_the_prior(tiny_run):
    from geovq.models.fsq import FiniteScalarQuantizer
    from geovq.settings import load_settings
    from geovq.stages import train_prior, train_vqvae

    overrides = {"run_dir": tiny_run, "device": "cpu"}
    vqvae = {"quantizer": "fsq", "levels": "8,8,4", "grid": "2x4", "epochs": 1}
    result = train_vqvae.run(load_settings({**overrides, "vqvae": vqvae}))
    name = "vqvae/fsq-2x4-l8-8-4"
    assert result.metrics["name"] == "fsq-2x4-l8-8-4"
    assert result.metrics["bits_per_image"] == pytest.approx(64.0)  # 8 x (3 + 3 + 2) bits
    run = RunDir(tiny_run)
    codes, meta = run.load_tensors(f"{name}/codes.safetensors", "codes")
    assert int(meta["k"]) == 256 and meta["metric"] == "fsq"
    assert codes["test.codes"].shape == (64, 2, 4) and int(codes["test.codes"].max()) < 256
    weights, model_meta = run.load_tensors(f"{name}/model.safetensors", "model")
    model = VQVAE(VQVAEConfig(**model_meta["config"]))
    model.load_state_dict(weights)
    from geovq.data import load_dataset
    from geovq.settings import DataSettings

    images = to_float(load_dataset(DataSettings(limit=64)).splits["test"].images)
    with torch.no_grad():
        z_e = model.encode(images).reshape(-1, 3)
    # the codes are the mixed-radix digits of the rounded bounded encoder outputs
    quantizer = FiniteScalarQuantizer((8, 8, 4))
    digits = torch.round(quantizer.bound(z_e)) + torch.tensor([4.0, 4.0, 2.0])
    expected = (digits[:, 0] + 8 * digits[:, 1] + 64 * digits[:, 2]).long()
    assert torch.equal(expected.view(64, 2, 4), codes["test.codes"])
    prior = train_prior.run(
        load_settings({**overrides, "prior": {"source": name, "epochs": 1, "layers": 2}})
    )
    assert prior.metrics


def test_fsq_levels_below_three_are_refused(tiny_run):
    from geovq import GeovqError
    from geovq.settings import load_settings

    with pytest.raises(GeovqError, match="levels >= 3"):
        load_settings({"run_dir": tiny_run, "vqvae": {"quantizer": "fsq", "levels": "2,4"}})
