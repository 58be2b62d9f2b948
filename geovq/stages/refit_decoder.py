"""``geovq refit-decoder``: fine-tune the VAE's decoder on a post-hoc quantization's codes.

The VAE's decoder was trained on noisy samples z ~ q(z|x), never on codewords; refitting it
(and its input projection) on the fixed codeword latents of the fit split closes much of the
gap to an end-to-end VQ-VAE. The encoder and the codes stay bit-identical: only
``quant/<name>/decoder.safetensors`` is written, which ``sample``, ``compare`` and the prior's
decoding then use.
"""

from __future__ import annotations

import json

import torch

from geovq import GeovqError
from geovq.data import to_float
from geovq.models.vae import VAE, reconstruction_loss
from geovq.progress import NullProgress
from geovq.quant.codebook import Codebook, codeword_latents
from geovq.rundir import RunDir
from geovq.settings import Settings
from geovq.stages.loaders import VaeFiles, decoded_mse, load_latents, load_vae, split_images
from geovq.stages.record import StageResult, StageRun
from geovq.stages.sources import list_sources, slug
from geovq.training import TrainConfig, resolve_device, train


def decoder_parameters(vae: VAE) -> dict[str, torch.nn.Parameter]:
    """The decoder trunk and its input projection: what a refit may change."""
    return {
        name: param
        for name, param in vae.named_parameters()
        if name.startswith(("decoder.", "from_latent."))
    }


def stage_key(name: str) -> str:
    return f"refit-decoder/{name}"


def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    source = _posthoc_source(run_dir, settings.refit.source)
    name = source.removeprefix("quant/")
    record = StageRun(run_dir, stage_key(name), {}, device, settings.seed)
    codebook_tensors, meta = record.read(f"{source}/codebook.safetensors", f"codebook of {source}")
    codes_tensors, _ = record.read(f"{source}/codes.safetensors", f"codes of {source}")
    files = VaeFiles(meta.get("vae") or None)
    _refuse_changed_latents(run_dir, name, files, settings.force)
    latents, latents_meta = load_latents(run_dir, settings.force, files=files)
    vae, vae_meta = load_vae(run_dir, device, settings.force, record.read, files)
    fit_split = json.loads(meta.get("fit_split", '"train"'))
    images = split_images(run_dir, latents_meta, files)
    codebook = Codebook(codebook_tensors["mu"], codebook_tensors["sigma"], meta["metric"])
    quantized = {
        split: codeword_latents(codebook, codes_tensors[f"{split}.codes"].flatten(1))
        for split in images
        if f"{split}.codes" in codes_tensors
    }
    recon = vae_meta.get("recon_loss", "bce")
    params = decoder_parameters(vae)
    for param in vae.parameters():
        param.requires_grad_(param in set(params.values()))
    before = {
        split: decoded_mse(vae.decode, z, images[split], device) for split, z in quantized.items()
    }

    train_latents = quantized[fit_split].to(device)
    train_images = images[fit_split].to(device)
    test_split = "test" if "test" in quantized else fit_split

    def step(batch, generator):
        pixels = to_float(batch[1])
        loss = reconstruction_loss(vae.decode(batch[0]), pixels, recon)
        return loss, {"recon": loss}

    def evaluate() -> dict[str, float]:
        mse = decoded_mse(vae.decode, quantized[test_split], images[test_split], device)
        return {f"{test_split}_mse_per_pixel": mse}

    refit = settings.refit
    result = train(
        vae,
        [train_latents, train_images],
        step,
        evaluate,
        TrainConfig(refit.epochs, refit.batch_size, refit.lr, settings.seed, refit.resume),
        run_dir,
        f"checkpoints/refit-{slug(source)}.safetensors",
        params=list(params.values()),
        progress=progress,
        label=f"refit-decoder {source}",
    )
    vae.eval()
    after = {
        split: decoded_mse(vae.decode, z, images[split], device) for split, z in quantized.items()
    }
    weights = {key: param.detach() for key, param in params.items()}
    record.write(
        f"{source}/decoder.safetensors",
        weights,
        {"source": source, "vae": files.name or "", "epochs": str(refit.epochs)},
    )
    metrics = {
        "source": source,
        "fit_split": fit_split,
        "mse_before": before,
        "mse_after": after,
        "history": result.history,
    }
    record.settings = {"refit": json.loads(refit.model_dump_json()), "seed": settings.seed}
    record.finish(metrics)
    rows = [
        [
            split,
            f"{before[split]:.5f}",
            f"{after[split]:.5f}",
            f"{after[split] / before[split]:.3f}",
        ]
        for split in quantized
    ]
    return StageResult(
        stage_key(name),
        metrics,
        record.outputs,
        title=f"refit-decoder {source} ({refit.epochs} epochs on {fit_split})",
        columns=["split", "mse/pixel before", "after", "ratio"],
        rows=rows,
    )


def _posthoc_source(run_dir: RunDir, source: str | None) -> str:
    if not source:
        posthoc = [s for s in list_sources(run_dir) if s.startswith("quant/")]
        raise GeovqError(
            f"--source quant/<name> is required; available: {', '.join(posthoc) or 'none'}"
        )
    source = source.strip("/")
    if source.startswith("vqvae/"):
        raise GeovqError(
            f"{source} is a VQ-VAE, whose decoder is already trained on its codes; "
            "refit-decoder takes a post-hoc quant/<name> source"
        )
    if not source.startswith("quant/") or not run_dir.exists(f"{source}/codes.safetensors"):
        posthoc = [s for s in list_sources(run_dir) if s.startswith("quant/")]
        raise GeovqError(
            f"no post-hoc quantization {source!r} in {run_dir.path}; "
            f"available: {', '.join(posthoc) or 'none (run `geovq quantize` first)'}"
        )
    return source


def _refuse_changed_latents(run_dir: RunDir, name: str, files: VaeFiles, force: bool) -> None:
    """The codes were assigned from the latents recorded by quantize; they must still match."""
    stale = [
        path
        for path in run_dir.stale_inputs(f"quantize/{name}")
        if path in (files.latents, files.vae)
    ]
    if stale and not force:
        raise GeovqError(
            f"{', '.join(stale)} changed since quant/{name} was fitted; rerun "
            f"`geovq quantize --name {name} --force` first, or pass --force"
        )
