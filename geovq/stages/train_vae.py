"""``geovq train-vae``: train the continuous VAE whose latents are quantized afterwards."""

from __future__ import annotations

import json

import torch

from geovq import GeovqError, memory
from geovq.artifacts import VaeFiles, VaeMeta
from geovq.data import Dataset, load_dataset, to_float
from geovq.models.blocks import TRUNK_CHANNELS
from geovq.models.rate_control import RateController, bits_to_nats
from geovq.models.vae import (
    VAE,
    VAEConfig,
    kl_divergence,
    kl_per_dim,
    recon_kind,
    reconstruction_loss,
)
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import Settings
from geovq.stages.record import StageResult, StageRun, fmt, stage
from geovq.training import TrainConfig, checkpoint_history, resolve_device, train
from geovq.training_log import TrainingLog, originals_and

EVAL_BATCH = 1000


def vae_config(settings: Settings, dataset: Dataset) -> VAEConfig:
    channels, height, width = dataset.image_shape
    if height % 4 or width % 4:
        raise GeovqError(
            f"image size {height}x{width} is not divisible by 4 as the conv trunk needs; "
            "pass --image-size with a multiple of 4"
        )
    vae = settings.vae
    return VAEConfig(
        channels=channels,
        height=height,
        width=width,
        latent=vae.latent,
        latent_dim=vae.latent_dim,
        spatial_channels=vae.spatial_channels,
        trunk=vae.trunk,
    )


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    files = VaeFiles(settings.vae.name)
    device = resolve_device(settings.device)
    record = StageRun(run_dir, files.train_key, None, device, settings.seed, settings.force)
    dataset = load_dataset(settings.data)
    notes = ([dataset.source_note] if dataset.source_note else []) + dataset.notes
    for note in notes:
        progress.log(note)
    config = vae_config(settings, dataset)
    chunks = _rate_chunks(settings, config)
    recon = recon_kind(settings.vae.recon_loss, config.channels)
    record.settle(_recorded_settings(settings), resume=settings.vae.resume)
    _check_memory(config, settings.vae.batch_size, device)

    torch.manual_seed(settings.seed)
    model = VAE(config).to(device)
    train_images = dataset.splits["train"].images.to(device)
    test_images = dataset.splits["test"].images.to(device)
    controller = _controller(settings, run_dir, files.checkpoint, chunks)
    free_bits = settings.vae.free_bits

    def step(batch, generator):
        images = to_float(batch[0])
        logits, mu, logvar = model(images, generator)
        rec = reconstruction_loss(logits, images, recon)
        per_dim = kl_per_dim(mu, logvar)
        charged = per_dim.clamp_min(free_bits) if free_bits else per_dim
        betas = controller.betas.to(per_dim.device, per_dim.dtype)
        loss = rec + (betas * charged.reshape(chunks, -1).sum(1)).sum()
        kl_chunks = per_dim.detach().reshape(chunks, -1).sum(1)
        return loss, {"loss": loss, "recon": rec, "kl": per_dim.sum(), "_kl_chunks": kl_chunks}

    def evaluate() -> dict[str, float]:
        figures = evaluate_vae(model, test_images, recon, controller.beta, settings.seed)
        return {**figures, **controller.state()}

    result = train(
        model,
        [train_images],
        step,
        evaluate,
        TrainConfig(
            settings.vae.epochs,
            settings.vae.batch_size,
            settings.vae.lr,
            settings.seed,
            settings.vae.resume,
        ),
        run_dir,
        files.checkpoint,
        progress=progress,
        label=f"train-vae{files.flag}",
        # the βs follow the whole batch's KL (the same on every rank under torchrun)
        on_step_end=lambda terms: controller.update(terms["_kl_chunks"]),
        log=TrainingLog(
            run_dir.path,
            files.train_key,
            settings.log == "tensorboard",
            lambda: originals_and(
                test_images[:8],
                torch.sigmoid(model.decode(model.encode(to_float(test_images[:8]))[0])),
            ),
        ),
    )
    final = result.history[-1] if result.history else {}
    meta = VaeMeta(json.loads(config.to_json()), recon, json.loads(settings.data.model_dump_json()))
    record.write(files.vae, model.state_dict(), meta.to_metadata())
    target = settings.vae.target_rate
    metrics = {
        "test_loss": final.get("test_loss"),
        "test_mse_per_pixel": final.get("test_mse_per_pixel"),
        "test_kl": final.get("test_kl"),
        "test_bits": final["test_kl"] / bits_to_nats(1) if final else None,
        "target_rate_bits": target,
        "beta": final.get("beta"),
        "train_loss": final.get("train_loss"),
        "images_per_s": round(result.images_per_s, 1),
        "epochs": settings.vae.epochs,
        "resumed_from": result.resumed_from,
        "history": result.history,
        "latent_dim": config.total_latent_dim,
        "data_files": list(dataset.files),
    }
    record.finish(metrics)
    rows = [
        [k, fmt(metrics[k])]
        for k in (
            "train_loss",
            "test_loss",
            "test_mse_per_pixel",
            "test_kl",
            "test_bits",
            "target_rate_bits",
            "beta",
            "images_per_s",
        )
    ]
    return StageResult(
        files.train_key, metrics, record.outputs, title=files.train_key, rows=rows, notes=notes
    )


def evaluate_vae(
    model: VAE, images_u8: torch.Tensor, recon: str, beta: float, seed: int
) -> dict[str, float]:
    """Test loss (ELBO terms with fixed noise) and MSE per pixel of decoding mu."""
    generator = torch.Generator(device=images_u8.device).manual_seed(seed + 7)
    n = images_u8.shape[0]
    loss = kl = sq_err = 0.0
    for start in range(0, n, EVAL_BATCH):
        images = to_float(images_u8[start : start + EVAL_BATCH])
        logits, mu, logvar = model(images, generator)
        count = images.shape[0]
        kl_batch = float(kl_divergence(mu, logvar))
        loss += (float(reconstruction_loss(logits, images, recon)) + beta * kl_batch) * count
        kl += kl_batch * count
        sq_err += float(((torch.sigmoid(model.decode(mu)) - images) ** 2).sum())
    pixels = images_u8[0].numel() * n
    return {"test_loss": loss / n, "test_kl": kl / n, "test_mse_per_pixel": sq_err / pixels}


def _check_memory(config: VAEConfig, batch_size: int, device: torch.device) -> None:
    """The flat latent's two linear layers hold 3 x D x (256 h w) weights: --latent-dim sets it."""
    h, w = config.grid
    features = TRUNK_CHANNELS * h * w
    parameters = 3.0 * config.total_latent_dim * features + 4e5
    activations = 4.0 * features + 2.0 * config.total_latent_dim
    memory.require(
        memory.training_bytes(parameters, activations, batch_size),
        device,
        f"train-vae with a latent of {config.total_latent_dim} dims",
        "use a smaller --latent-dim",
    )


def _rate_chunks(settings: Settings, config: VAEConfig) -> int:
    """How many chunks hold their own share of the target rate (1: the whole latent)."""
    chunks = settings.vae.rate_chunks
    if chunks is None:
        return 1
    if settings.vae.target_rate is None:
        raise GeovqError("--rate-chunks needs --target-rate (the rate the chunks share)")
    if config.total_latent_dim % chunks:
        raise GeovqError(
            f"--rate-chunks {chunks} does not divide the latent's {config.total_latent_dim} "
            f"dims; use a divisor (for a spatial latent, its positions: "
            f"{config.grid[0] * config.grid[1]})"
        )
    return chunks


def _controller(
    settings: Settings, run_dir: RunDir, checkpoint: str, chunks: int
) -> RateController | _FixedBeta:
    """β's controller (one β per rate chunk); a fixed β when there is no target rate."""
    vae = settings.vae
    if vae.target_rate is None:
        return _FixedBeta(vae.beta)
    if vae.beta <= 0:
        raise GeovqError("--target-rate needs --beta > 0 to start from (e.g. --beta 1)")
    controller = RateController(
        bits_to_nats(vae.target_rate), chunks, beta=vae.beta, gain=vae.rate_gain
    )
    if vae.resume:
        history = checkpoint_history(run_dir, checkpoint)
        if history:
            controller.restore(history[-1])
    return controller


class _FixedBeta:
    """The controller's interface for a fixed β."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.betas = torch.tensor([beta], dtype=torch.float64)

    def update(self, kl) -> torch.Tensor:
        return self.betas

    def state(self) -> dict[str, float]:
        return {"beta": self.beta}


def _recorded_settings(settings: Settings) -> dict:
    return {
        "data": json.loads(settings.data.model_dump_json()),
        "vae": json.loads(settings.vae.model_dump_json()),
        "seed": settings.seed,
        "device": settings.device,
    }
