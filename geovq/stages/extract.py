"""``geovq extract``: encode every split with the trained VAE into ``latents.safetensors``.

``--as NAME`` encodes another dataset (resized to the VAE's image shape) into one more split
beside the run's own; its data settings are kept in the file's metadata so a later plain
``extract`` re-encodes it too and nothing is lost.
"""

from __future__ import annotations

import json

import torch

from geovq import GeovqError, distributed
from geovq.artifacts import LatentsMeta, VaeFiles, load_vae, run_data_settings
from geovq.data import Dataset, Split, load_dataset, to_float
from geovq.models.vae import VAE
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import DataSettings, Settings
from geovq.stages.record import StageResult, StageRun, check_finite, stage
from geovq.training import resolve_device

OWN_SPLITS = ("train", "test")


@torch.no_grad()
def encode_split(
    model: VAE, images_u8: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(N, C, H, W) uint8 -> mu, logvar (N, D) float32 on the CPU, and the MSE per pixel of
    decoding mu (the continuous reconstruction every quantization of these latents is measured
    against, so it is measured once, here); batched, deterministic. Under torchrun the ranks
    share the batches out and every rank gets the whole result."""

    def encode(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = to_float(images_u8[start:stop].to(device))
        mu, logvar = model.encode(images)
        sq_err = (torch.sigmoid(model.decode(mu)).float() - images).double().pow(2).sum()
        return mu.float().cpu(), logvar.float().cpu(), sq_err.cpu().reshape(1)

    mu, logvar, sq_err = distributed.map_batches(encode, images_u8.shape[0], batch_size)
    return mu, logvar, float(sq_err.sum()) / images_u8[0].numel() / images_u8.shape[0]


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    files = VaeFiles(settings.vae.name)
    record = StageRun(run_dir, files.extract_key, None, device, settings.seed, settings.force)
    model, vae_meta = load_vae(record, device, files)
    image_shape = (model.config.channels, model.config.height, model.config.width)
    extras = _previous_extras(record, files)
    as_name = settings.extract.as_name
    if as_name is not None:
        if as_name in OWN_SPLITS:
            raise GeovqError(f"--as {as_name} would replace the run's own split; pick another name")
        extras[as_name] = json.loads(
            _extra_data_settings(settings.data, image_shape).model_dump_json()
        )
    record.settle({"extract": {"extra_splits": extras}, "seed": settings.seed})
    own = load_dataset(run_data_settings(record, files))

    splits: dict[str, Split] = {name: own.splits[name] for name in OWN_SPLITS}
    for name, data_json in extras.items():
        splits[name] = _whole(load_dataset(DataSettings(**data_json)), image_shape, name)

    tensors: dict[str, torch.Tensor] = {}
    mse: dict[str, float] = {}
    progress.start(files.extract_key, total=len(splits))
    for name, split in splits.items():
        mu, logvar, mse[name] = encode_split(
            model, split.images, settings.extract.batch_size, device
        )
        fix = f"retrain the VAE (`geovq train-vae{files.flag} --force`, e.g. with a lower --lr)"
        check_finite(mu, f"the latents of split {name}", fix)
        check_finite(logvar, f"the log-variances of split {name}", fix)
        tensors.update({f"{name}.mu": mu, f"{name}.logvar": logvar, f"{name}.labels": split.labels})
        progress.advance(1)
    progress.finish()
    meta = LatentsMeta(
        latent_dim=model.config.total_latent_dim,
        grid=model.config.latent_grid,
        vae=files.name,
        vae_config=vae_meta.config,
        extra_splits=extras,
    )
    record.write(files.latents, tensors, meta.to_metadata())
    counts = {name: len(split) for name, split in splits.items()}
    metrics = {
        "splits": counts,
        "latent_dim": model.config.total_latent_dim,
        "mse_per_pixel": mse,  # decoding mu, per split
    }
    record.finish(metrics)
    dim = model.config.total_latent_dim
    rows = [[name, f"{count} x {dim}", f"{mse[name]:.5f}"] for name, count in counts.items()]
    return StageResult(
        files.extract_key,
        metrics,
        record.outputs,
        title=files.extract_key,
        columns=["split", "latents", "mse/pixel (mu)"],
        rows=rows,
    )


def _previous_extras(record: StageRun, files: VaeFiles) -> dict[str, dict]:
    """Extra splits of the recorded latents: a plain rerun keeps them."""
    recorded = record.record_of(files.extract_key)
    if recorded is None:
        return {}
    return dict(recorded.get("settings", {}).get("extract", {}).get("extra_splits", {}))


def _extra_data_settings(data: DataSettings, image_shape: tuple[int, int, int]) -> DataSettings:
    """The user's dataset, forced to the VAE's channels (and size, for image folders)."""
    channels, height, width = image_shape
    size = height if data.dataset.startswith("folder:") and height == width else data.image_size
    return data.model_copy(update={"channels": channels, "image_size": size})


def _whole(dataset: Dataset, image_shape: tuple[int, int, int], name: str) -> Split:
    """Every image of an extra dataset as one split; its shape must match the VAE's."""
    if dataset.image_shape != image_shape:
        raise GeovqError(
            f"dataset {dataset.name} has images of shape {dataset.image_shape}, the VAE expects "
            f"{image_shape}; pick a dataset of that shape for --as {name}"
        )
    return dataset.whole()
