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
from geovq.artifacts import (
    DecoderMeta,
    Quantization,
    Reader,
    VaeFiles,
    load_codebook,
    load_codes,
    load_latents,
    load_vae,
    split_images,
)
from geovq.data import to_float
from geovq.metrics import decoded_mse
from geovq.models.vae import VAE, reconstruction_loss
from geovq.progress import NullProgress
from geovq.quant.codebook import codeword_latents
from geovq.rundir import RunDir
from geovq.settings import Settings
from geovq.stages.record import StageResult, StageRun, stage
from geovq.stages.sources import list_sources
from geovq.training import TrainConfig, resolve_device, train
from geovq.training_log import TrainingLog, originals_and


def decoder_parameters(vae: VAE) -> dict[str, torch.nn.Parameter]:
    """The decoder trunk and its input projection: what a refit may change."""
    return {
        name: param
        for name, param in vae.named_parameters()
        if name.startswith(("decoder.", "from_latent."))
    }


def stage_key(name: str) -> str:
    return Quantization("quant", name).refit_key


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    quant = _posthoc_source(run_dir, settings.refit.source)
    source, name = quant.source, quant.name
    record = StageRun(run_dir, quant.refit_key, None, device, settings.seed, settings.force)
    record.settle(
        {"refit": json.loads(settings.refit.model_dump_json()), "seed": settings.seed},
        resume=settings.refit.resume,
    )
    codebook, meta = load_codebook(record, quant)
    codes_tensors, _ = load_codes(record, quant)
    files = VaeFiles(meta.vae)
    _refuse_changed_latents(record, quant, files)
    latents, latents_meta = load_latents(record, files)
    vae, vae_meta = load_vae(record, device, files)
    fit_split = meta.fit_split or "train"
    images = split_images(record, latents_meta, files)
    quantized = {
        split: codeword_latents(codebook, codes_tensors[f"{split}.codes"].flatten(1))
        for split in images
        if f"{split}.codes" in codes_tensors
    }
    # the codes came from these splits of the latents; a split added later is not our input
    record.narrow_to_splits(files.latents, latents, quantized)
    recon = vae_meta.recon_loss
    params = decoder_parameters(vae)
    for param in vae.parameters():
        param.requires_grad_(param in set(params.values()))
    before = _mse_before(record, quant, vae, quantized, images, device)

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
        quant.refit_checkpoint,
        params=list(params.values()),
        progress=progress,
        label=f"refit-decoder {source}",
        log=TrainingLog(
            run_dir.path,
            stage_key(name),
            settings.log == "tensorboard",
            lambda: originals_and(
                images[test_split][:8],
                torch.sigmoid(vae.decode(quantized[test_split][:8].to(device))),
            ),
        ),
    )
    vae.eval()
    after = {
        split: decoded_mse(vae.decode, z, images[split], device) for split, z in quantized.items()
    }
    weights = {key: param.detach() for key, param in params.items()}
    record.write(
        quant.decoder, weights, DecoderMeta(source, files.name, refit.epochs).to_metadata()
    )
    metrics = {
        "source": source,
        "fit_split": fit_split,
        "mse_before": before,
        "mse_after": after,
        "history": result.history,
    }
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


def _mse_before(reader: Reader, quant: Quantization, vae, quantized, images, device) -> dict:
    """Each split's MSE through the VAE's own decoder: quantize measured it on these very codes
    (its record, verified with the codes), so it is read, not decoded again (60,000 images take
    tens of seconds on a CPU); a split it did not measure is decoded here."""
    measured = ((reader.record_of(quant.key) or {}).get("metrics") or {}).get("splits", {})
    return {
        split: measured.get(split, {}).get("mse_per_pixel")
        or decoded_mse(vae.decode, z, images[split], device)
        for split, z in quantized.items()
    }


def _posthoc_source(run_dir: RunDir, source: str | None) -> Quantization:
    if not source:
        posthoc = [s for s in list_sources(run_dir) if s.startswith("quant/")]
        raise GeovqError(
            f"--source quant/<name> is required; available: {', '.join(posthoc) or 'none'}"
        )
    quant = Quantization.parse(source)
    if not quant.posthoc:
        raise GeovqError(
            f"{source} is a VQ-VAE, whose decoder is already trained on its codes; "
            "refit-decoder takes a post-hoc quant/<name> source"
        )
    if not run_dir.exists(quant.codes):
        posthoc = [s for s in list_sources(run_dir) if s.startswith("quant/")]
        raise GeovqError(
            f"no post-hoc quantization {source!r} in {run_dir.path}; "
            f"available: {', '.join(posthoc) or 'none (run `geovq quantize` first)'}"
        )
    return quant


def _refuse_changed_latents(reader: Reader, quant: Quantization, files: VaeFiles) -> None:
    """The codes were assigned from the latents recorded by quantize; they must still match."""
    stale = [
        path
        for path in reader.run_dir.stale_inputs(quant.key, reader.manifest)
        if path.partition("#")[0] in (files.latents, files.vae)
    ]
    if stale and not reader.force:
        raise GeovqError(
            f"{', '.join(stale)} changed since {quant.source} was fitted; rerun "
            f"`geovq quantize --name {quant.name} --force` first, or pass --force"
        )
