import pytest
import torch

from geovq.rundir import RunDir
from tests.helpers import cli, snapshot

BASE = ("--device", "cpu", "-q")


@pytest.fixture
def quantized(tiny_run):
    assert (
        cli("quantize", "--run-dir", tiny_run, "--metric", "w2", "--k", "16", *BASE).exit_code == 0
    )
    return tiny_run


def test_refit_keeps_encoder_and_codes_and_lowers_train_mse(quantized):
    run = RunDir(quantized)
    vae_before = run.file("vae.safetensors").read_bytes()
    codes_before = run.file("quant/w2-k16/codes.safetensors").read_bytes()
    args = ("refit-decoder", "--run-dir", quantized, "--source", "quant/w2-k16", "--epochs", "3")
    result = cli(*args, *BASE)
    assert result.exit_code == 0, result.stderr
    assert run.file("vae.safetensors").read_bytes() == vae_before
    assert run.file("quant/w2-k16/codes.safetensors").read_bytes() == codes_before
    metrics = run.stage("refit-decoder/w2-k16")["metrics"]
    assert metrics["mse_after"]["train"] < metrics["mse_before"]["train"]
    decoder, _ = run.load_tensors("quant/w2-k16/decoder.safetensors", "decoder")
    assert decoder and all(k.startswith(("decoder.", "from_latent.")) for k in decoder)
    vae, _ = run.load_tensors("vae.safetensors", "vae")
    assert any(not torch.equal(vae[k], decoder[k]) for k in decoder)
    # "before" is the codes through the VAE's own decoder: decode them here, another way
    from geovq.data import load_dataset
    from geovq.settings import DataSettings
    from geovq.stages.sources import load_source

    plain = load_source(run, "quant/w2-k16", torch.device("cpu"), use_refit=False)
    data = run.stage("train-vae")["settings"]["data"]
    images = load_dataset(DataSettings(**data)).splits
    for split in ("train", "test"):
        pixels = images[split].images.float() / 255
        direct = float(((plain.decode(plain.codes[split]) - pixels) ** 2).mean())
        assert metrics["mse_before"][split] == pytest.approx(direct, rel=1e-5)


def test_sources_decode_through_the_refit(quantized):
    from geovq.stages.sources import load_source

    assert (
        cli(
            "refit-decoder",
            "--run-dir",
            quantized,
            "--source",
            "quant/w2-k16",
            "--epochs",
            "1",
            *BASE,
        ).exit_code
        == 0
    )
    refit = load_source(RunDir(quantized), "quant/w2-k16", torch.device("cpu"))
    plain = load_source(RunDir(quantized), "quant/w2-k16", torch.device("cpu"), use_refit=False)
    assert refit.decoder.endswith("decoder.safetensors") and plain.decoder == "vae.safetensors"
    codes = refit.codes["test"][:4]
    assert not torch.allclose(refit.decode(codes), plain.decode(codes))


def test_quantize_refit_switch(tiny_run):
    args = ("quantize", "--run-dir", tiny_run, "--k", "8", "--refit-decoder", *BASE)
    assert cli(*args).exit_code == 0
    assert (tiny_run / "quant/w2-k8/decoder.safetensors").is_file()


def test_refit_refuses_vqvae_and_missing_sources(quantized):
    before = snapshot(quantized)
    for source, needle in (
        ("vqvae/x", "VQ-VAE"),
        ("quant/none", "quant/w2-k16"),
        (None, "--source"),
    ):
        args = ("refit-decoder", "--run-dir", quantized) + (("--source", source) if source else ())
        result = cli(*args)
        assert result.exit_code != 0 and needle in result.stderr
    assert snapshot(quantized) == before


def test_refit_refuses_changed_latents(quantized):
    run = RunDir(quantized)
    latents, meta = run.load_tensors("latents.safetensors", "latents")
    latents["train.mu"] += 1
    run.save_tensors("latents.safetensors", latents, meta)
    result = cli("refit-decoder", "--run-dir", quantized, "--source", "quant/w2-k16")
    assert result.exit_code != 0 and "changed" in result.stderr
