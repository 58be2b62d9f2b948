"""The artifact layer: metadata written and parsed in one place, every load verified."""

import json
import shutil

import pytest

from geovq.artifacts import CodesMeta, LatentsMeta
from geovq.rundir import RunDir
from tests.helpers import cli, tree_digest

BASE = ("--device", "cpu", "-q")


@pytest.fixture(scope="module")
def full_run(tiny_run_template, tmp_path_factory):
    """The tiny run plus a quantization with a refit decoder, a VQ-VAE and a prior on each."""
    run = tmp_path_factory.mktemp("artifacts") / "run"
    shutil.copytree(tiny_run_template, run)
    steps = [
        ("quantize", "--k", "8", "--name", "q"),
        ("refit-decoder", "--source", "quant/q", "--epochs", "1"),
        ("train-vqvae", "--grid", "2x4", "--k", "8", "--epochs", "1", "--name", "v"),
        ("train-prior", "--source", "quant/q", "--epochs", "1", "--layers", "2", "--hidden", "8"),
        ("train-prior", "--source", "vqvae/v", "--epochs", "1", "--layers", "2", "--hidden", "8"),
    ]
    for args in steps:
        result = cli(args[0], "--run-dir", run, *BASE, *args[1:])
        assert result.exit_code == 0, (args, result.stderr)
    return run


@pytest.fixture
def run(full_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(full_run, target)
    return target


# (file whose last byte is flipped, the stage the error must name, a command that reads it)
FLIPS = [
    ("vae.safetensors", "train-vae", ("extract",)),
    ("latents.safetensors", "extract", ("quantize", "--k", "4")),
    ("quant/q/codebook.safetensors", "quantize/q", ("sample", "--source", "quant/q")),
    ("quant/q/codes.safetensors", "quantize/q", ("sample", "--source", "quant/q")),
    ("quant/q/decoder.safetensors", "refit-decoder/q", ("sample", "--source", "quant/q")),
    ("vqvae/v/model.safetensors", "train-vqvae/v", ("sample", "--source", "vqvae/v")),
    ("vqvae/v/codes.safetensors", "train-vqvae/v", ("sample", "--source", "vqvae/v")),
    ("prior/quant-q.safetensors", "train-prior/quant-q", ("sample", "--source", "quant/q")),
    ("prior/vqvae-v.safetensors", "train-prior/vqvae-v", ("compare", "--samples", "8")),
]


@pytest.mark.parametrize(("relpath", "producer", "command"), FLIPS, ids=[f[0] for f in FLIPS])
def test_a_flipped_byte_in_any_artifact_is_refused(run, relpath, producer, command):
    path = run / relpath
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the tensor data: the file still parses
    path.write_bytes(bytes(data))
    before = tree_digest(run)
    result = cli(command[0], "--run-dir", run, *command[1:], "--device", "cpu", "-q")
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert relpath in result.stderr and "changed since" in result.stderr
    assert repr(producer) in result.stderr and "--force" in result.stderr
    assert tree_digest(run) == before


def test_sample_and_compare_record_every_input(run):
    assert cli("sample", "--run-dir", run, "--source", "quant/q", *BASE).exit_code == 0
    assert cli("compare", "--run-dir", run, "--samples", "8", *BASE).exit_code == 0
    stages = RunDir(run).manifest()["stages"]
    sample_inputs = set(stages["sample/quant-q/prior"]["inputs"])
    expected = {"vae.safetensors", "quant/q/codebook.safetensors", "quant/q/codes.safetensors",
                "quant/q/decoder.safetensors", "prior/quant-q.safetensors"}  # fmt: skip
    assert expected <= sample_inputs
    compare_inputs = set(stages["compare/test"]["inputs"])
    assert {"vae.safetensors", "latents.safetensors#test", "quant/q/decoder.safetensors",
            "vqvae/v/model.safetensors", "prior/quant-q.safetensors",
            "prior/vqvae-v.safetensors"} <= compare_inputs  # fmt: skip
    # Retraining the VAE makes them stale, and `info` says so.
    assert cli("train-vae", "--run-dir", run, "--limit", "64", "--epochs", "1", "--seed", "1",
               "--force", *BASE).exit_code == 0  # fmt: skip
    info = json.loads(cli("info", "--run-dir", run, "--json").stdout)["metrics"]["stages"]
    assert info["sample/quant-q/prior"]["current"] is False
    assert info["compare/test"]["current"] is False


def test_codes_metadata_is_written_and_parsed_in_one_place(run):
    _, raw = RunDir(run).load_tensors("quant/q/codes.safetensors", "codes")
    meta = CodesMeta.from_metadata(raw)
    assert meta.grid == (2, 4) and meta.k == 8 and meta.per_position is False
    assert raw["grid"] == [2, 4] and raw["per_position"] is False  # plain JSON, not "true"
    assert CodesMeta.from_metadata(meta.to_metadata()) == meta
    # Files from schema 1 stored every value as a (sometimes JSON-encoded) string.
    old = {"kind": "posthoc", "k": "8", "grid": "[2, 4]", "per_position": "false",
           "metric": "w2", "chunks": "8", "source": "quant/q", "vae": "",
           "fit_split": '"train"'}  # fmt: skip
    assert CodesMeta.from_metadata(old) == meta
    _, vqvae_raw = RunDir(run).load_tensors("vqvae/v/codes.safetensors", "codes")
    assert CodesMeta.from_metadata(vqvae_raw).kind == "vqvae"
    _, latents_raw = RunDir(run).load_tensors("latents.safetensors", "latents")
    assert LatentsMeta.from_metadata(latents_raw).latent_dim == 32


def test_an_unrecorded_file_is_refused(run):
    shutil.copytree(run / "quant/q", run / "quant/f2")  # as a killed old version left it
    result = cli("train-prior", "--run-dir", run, "--source", "quant/f2", "--epochs", "1")
    assert result.exit_code == 2 and "not recorded" in result.stderr
