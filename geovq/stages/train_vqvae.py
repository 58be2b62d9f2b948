"""``geovq train-vqvae``: the end-to-end VQ-VAE baseline on the VAE's own trunks and data.

Writes ``vqvae/<name>/`` (model, codebook, codes for every split) in the same codes format as
``quantize``, so the prior, ``sample`` and ``compare`` treat both kinds alike.
"""

from __future__ import annotations

import json

import torch

from geovq import GeovqError, memory
from geovq.artifacts import CodesMeta, ModelMeta, Quantization, first_trained_record, recorded_data
from geovq.data import Dataset, load_dataset, to_float
from geovq.metrics import mse_per_pixel, summarize_codes
from geovq.models.vae import recon_kind
from geovq.models.vqvae import VQVAE, VQVAEConfig, validate_config, vqvae_loss
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import DataSettings, Settings, parse_grid
from geovq.stages.record import StageResult, StageRun, fmt, stage
from geovq.training import TrainConfig, resolve_device, train
from geovq.training_log import TrainingLog, originals_and

KMEANS_INIT_IMAGES = 2048
EVAL_BATCH = 1000


def default_name(settings: Settings) -> str:
    """``vqvae-{H}x{W}-k{K}``, or ``fsq-{H}x{W}-l{levels}`` (e.g. fsq-7x7-l4-4-4-4)."""
    vq = settings.vqvae
    height, width = parse_grid(vq.grid)
    if vq.name:
        return vq.name
    if vq.quantizer == "fsq":
        return f"fsq-{height}x{width}-l{'-'.join(map(str, vq.levels))}"
    return f"vqvae-{height}x{width}-k{vq.k}"


def stage_key(name: str) -> str:
    return Quantization("vqvae", name).key


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    quant = Quantization("vqvae", default_name(settings))
    name = quant.name
    record = StageRun(run_dir, quant.key, None, device, settings.seed, settings.force)
    data_settings = _data_settings(record, settings)
    dataset = load_dataset(data_settings)
    if dataset.source_note:
        progress.log(dataset.source_note)
    config = _config(settings, dataset, _trunk(record, settings))
    record.settle(_recorded(settings, data_settings), resume=settings.vqvae.resume)
    _check_memory(config, settings.vqvae.batch_size, device)

    model = VQVAE(config, seed=settings.seed).to(device)
    images = {split: data.images.to(device) for split, data in dataset.splits.items()}
    if config.quantizer == "vq" and settings.vqvae.init == "kmeans" and not settings.vqvae.resume:
        _init_codebook_by_kmeans(model, images["train"], settings.seed)
    recon = recon_kind(settings.vqvae.recon_loss, config.channels)
    beta = config.beta

    def step(batch, generator):
        pixels = to_float(batch[0])
        logits, _, losses = model(pixels)
        return vqvae_loss(logits, pixels, losses, beta, recon)

    def evaluate() -> dict[str, float]:
        figures = evaluate_split(model, images["test"])
        return {f"test_{k}": v for k, v in figures.items()}

    vq = settings.vqvae
    result = train(
        model,
        [images["train"]],
        step,
        evaluate,
        TrainConfig(vq.epochs, vq.batch_size, vq.lr, settings.seed, vq.resume),
        run_dir,
        quant.checkpoint,
        progress=progress,
        label=f"train-vqvae {name}",
        log=TrainingLog(
            run_dir.path,
            stage_key(name),
            settings.log == "tensorboard",
            lambda: originals_and(
                images["test"][:8], torch.sigmoid(model(to_float(images["test"][:8]))[0])
            ),
        ),
    )

    meta = ModelMeta(
        json.loads(config.to_json()), recon, json.loads(data_settings.model_dump_json())
    )
    record.write(quant.model, model.state_dict(), meta.to_metadata())
    codes_meta = CodesMeta(
        kind="vqvae",
        k=config.k,
        grid=config.grid,
        source=quant.source,
        metric="fsq" if config.quantizer == "fsq" else None,
    )
    codebook = model.quantizer.codebook.detach()
    record.write(quant.codebook, {"codebook": codebook}, codes_meta.to_metadata())
    codes, split_metrics = {}, {}
    for split, split_images in images.items():
        split_codes = codes_for_split(model, split_images)
        codes[f"{split}.codes"] = split_codes
        codes[f"{split}.labels"] = dataset.splits[split].labels
        split_metrics[split] = evaluate_split(model, split_images, split_codes)
    record.write(quant.codes, codes, codes_meta.to_metadata())
    metrics = {
        "name": name,
        "kind": "vqvae",
        "trunk": config.trunk,
        "quantizer": config.quantizer,
        "levels": list(config.levels),
        "grid": list(config.grid),
        "k": config.k,
        "bits_per_image": config.bits_per_image,
        "splits": split_metrics,
        "history": result.history,
        "images_per_s": round(result.images_per_s, 1),
        "data_files": list(dataset.files),
    }
    record.finish(metrics)
    test = split_metrics.get("test", {})
    rows = [
        [key, fmt(test.get(key))]
        for key in ("mse_per_pixel", "utilisation", "dead_codes", "perplexity", "bits_per_image")
    ]
    notes = [dataset.source_note] if dataset.source_note else []
    return StageResult(
        stage_key(name),
        metrics,
        record.outputs,
        title=f"train-vqvae {name} (test)",
        rows=rows,
        notes=notes,
    )


@torch.no_grad()
def codes_for_split(model: VQVAE, images_u8: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, gh, gw) int64 codes on the CPU, batched."""
    parts = [
        model.codes_for(to_float(images_u8[i : i + EVAL_BATCH])).cpu()
        for i in range(0, len(images_u8), EVAL_BATCH)
    ]
    return torch.cat(parts)


@torch.no_grad()
def evaluate_split(
    model: VQVAE, images_u8: torch.Tensor, codes: torch.Tensor | None = None
) -> dict[str, float]:
    """MSE per pixel of decoding the codes, plus code usage, from the split's totals."""
    codes = codes_for_split(model, images_u8) if codes is None else codes
    recons = []
    for start in range(0, len(images_u8), EVAL_BATCH):
        batch_codes = codes[start : start + EVAL_BATCH].to(images_u8.device)
        recons.append(torch.sigmoid(model.decode_codes(batch_codes)).float().cpu())
    figures = {"mse_per_pixel": mse_per_pixel(torch.cat(recons), to_float(images_u8.cpu()))}
    figures.update(summarize_codes(codes, model.config.k))
    return figures


def _init_codebook_by_kmeans(model: VQVAE, train_images: torch.Tensor, seed: int) -> None:
    """Seed the codebook with k-means centres of the untrained encoder's outputs."""
    from geovq.quant.kmeans import kmeans

    with torch.no_grad():
        z_e = model.encode(to_float(train_images[:KMEANS_INIT_IMAGES])).reshape(
            -1, model.config.codebook_dim
        )
    k = model.config.k
    if z_e.shape[0] < k:
        raise GeovqError(
            f"--init kmeans needs at least K={k} encoder outputs but the data gives "
            f"{z_e.shape[0]}; use --init random or a smaller --k"
        )
    centers = kmeans(z_e.double().cpu(), k, restarts=1, iters=50, seed=seed).centers
    model.quantizer.init_codebook(centers.to(z_e))


def _data_settings(reader: StageRun, settings: Settings) -> DataSettings:
    """The run's dataset (from train-vae) unless the run has none; then --dataset is needed."""
    run_dir = reader.run_dir
    record = first_trained_record(reader.manifest)
    explicit = "dataset" in settings.data.model_fields_set
    if record is None:
        if not explicit:
            raise GeovqError(
                f"no dataset settings in {run_dir.path} (no trained model); pass --dataset "
                "(e.g. --dataset mnist5k) or run `geovq train-vae` first"
            )
        return settings.data
    recorded = recorded_data(record, str(run_dir.manifest_path))
    if explicit and settings.data.dataset != recorded.dataset:
        raise GeovqError(
            f"--dataset {settings.data.dataset} differs from the run's {recorded.dataset}; a fair "
            "baseline trains on the same data: drop --dataset or use another --run-dir"
        )
    return recorded


def _trunk(reader: StageRun, settings: Settings) -> str:
    """The run's trunk (its first trained model's), so the baseline has the VAE's capacity."""
    chosen = settings.vqvae.trunk
    record = first_trained_record(reader.manifest)
    if record is None:
        return chosen or "reference"
    recorded_settings = record["settings"]
    section = recorded_settings.get("vae") or recorded_settings.get("vqvae") or {}
    recorded = section.get("trunk") or "reference"
    if chosen is not None and chosen != recorded:
        raise GeovqError(
            f"--trunk {chosen} differs from the run's {recorded} trunk; a fair baseline uses the "
            "same trunk as the VAE: drop --trunk or use another --run-dir"
        )
    return recorded


def _config(settings: Settings, dataset: Dataset, trunk: str) -> VQVAEConfig:
    channels, height, width = dataset.image_shape
    grid_h, grid_w = parse_grid(settings.vqvae.grid)
    vq = settings.vqvae
    shape = {"channels": channels, "height": height, "width": width}
    shape.update(grid_h=grid_h, grid_w=grid_w, trunk=trunk)
    # levels are checked by the settings; only the grid can still be wrong here
    if vq.quantizer == "fsq":
        config = VQVAEConfig.fsq(vq.levels, **shape)
    else:
        config = VQVAEConfig(
            **shape,
            k=vq.k,
            codebook_dim=vq.codebook_dim,
            beta=vq.beta,
            codebook_update=vq.codebook_update,
            ema_decay=vq.ema_decay,
            dead_code_restart=vq.dead_code_restart,
        )
    try:
        validate_config(config)
    except ValueError as error:
        raise GeovqError(f"{error} (--grid {vq.grid})") from None
    return config


def _check_memory(config: VQVAEConfig, batch_size: int, device: torch.device) -> None:
    """The codebook (with its EMA copies) and a batch's distances to every codeword grow with
    K; k-means initialisation adds a distance matrix of its own."""
    positions = config.grid[0] * config.grid[1]
    codebook = 4.0 * config.k * config.codebook_dim + config.k
    distances = 3.0 * batch_size * positions * config.k
    memory.require(
        (codebook * memory.ADAM_COPIES + distances) * memory.FLOAT,
        device,
        f"train-vqvae with --k {config.k}",
        "use a smaller --k",
    )


def _recorded(settings: Settings, data: DataSettings) -> dict:
    return {
        "data": json.loads(data.model_dump_json()),
        "vqvae": json.loads(settings.vqvae.model_dump_json()),
        "seed": settings.seed,
    }
