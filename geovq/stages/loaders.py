"""Reading the artifacts stages share (the VAE, the latents, the run's dataset settings)."""

from __future__ import annotations

import json

import torch

from geovq import GeovqError
from geovq.models.vae import VAE, VAEConfig
from geovq.rundir import RunDir
from geovq.settings import DataSettings

VAE_FILE = "vae.safetensors"
LATENTS_FILE = "latents.safetensors"


def load_vae(
    run_dir: RunDir, device: torch.device, force: bool, reader=None
) -> tuple[VAE, dict[str, str]]:
    """The trained VAE (eval mode) and its metadata; refuses if it changed since training.

    ``reader`` is a StageRun's ``read`` so the stage records the VAE as an input.
    """
    run_dir.check_current(VAE_FILE, "train-vae", force)
    read = reader or (lambda path, what: run_dir.load_tensors(path, what))
    tensors, metadata = read(VAE_FILE, "trained VAE")
    try:
        config = VAEConfig.from_json(metadata["config"])
        model = VAE(config)
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise GeovqError(
            f"{run_dir.file(VAE_FILE)} does not hold a geovq VAE ({error}); rerun `geovq train-vae`"
        ) from None
    return model.to(device).eval(), metadata


def run_data_settings(run_dir: RunDir, stage: str = "train-vae") -> DataSettings:
    """The dataset settings the run was trained on, as recorded in the manifest."""
    record = run_dir.stage(stage)
    if record is None:
        raise GeovqError(
            f"no {stage} stage recorded in {run_dir.path}; run `geovq {stage}` first "
            "(or check --run-dir)"
        )
    return DataSettings(**record["settings"]["data"])


def load_latents(run_dir: RunDir, force: bool, reader=None) -> tuple[dict[str, torch.Tensor], dict]:
    """``latents.safetensors``: {split}.mu / .logvar / .labels and its metadata."""
    run_dir.check_current(LATENTS_FILE, "extract", force)
    read = reader or (lambda path, what: run_dir.load_tensors(path, what))
    return read(LATENTS_FILE, "latents")


def latent_splits(latents: dict[str, torch.Tensor]) -> list[str]:
    """Split names in a latents file, run's own first (train, test), extras after."""
    names = sorted({key.rsplit(".", 1)[0] for key in latents})
    own = [name for name in ("train", "test") if name in names]
    return own + [name for name in names if name not in own]


def latent_grid(metadata: dict[str, str]) -> tuple[int, int] | None:
    grid = json.loads(metadata.get("grid", "null"))
    return tuple(grid) if grid else None
