"""Reading the artifacts stages share (the VAE, the latents, the run's dataset settings)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from geovq import GeovqError
from geovq.models.vae import VAE, VAEConfig
from geovq.rundir import RunDir
from geovq.settings import DataSettings


@dataclass(frozen=True)
class VaeFiles:
    """Where one VAE's artifacts live. A run may hold several VAEs (``--vae NAME``, e.g. a flat
    and a spatial one); the unnamed default keeps the plain file names."""

    name: str | None = None

    @property
    def suffix(self) -> str:
        return f"-{self.name}" if self.name else ""

    @property
    def vae(self) -> str:
        return f"vae{self.suffix}.safetensors"

    @property
    def latents(self) -> str:
        return f"latents{self.suffix}.safetensors"

    @property
    def train_key(self) -> str:
        return f"train-vae/{self.name}" if self.name else "train-vae"

    @property
    def extract_key(self) -> str:
        return f"extract/{self.name}" if self.name else "extract"

    @property
    def checkpoint(self) -> str:
        return f"checkpoints/train-vae{self.suffix}.safetensors"

    @property
    def flag(self) -> str:
        return f" --vae {self.name}" if self.name else ""


def load_vae(
    run_dir: RunDir, device: torch.device, force: bool, reader=None, files: VaeFiles = VaeFiles()
) -> tuple[VAE, dict[str, str]]:
    """The trained VAE (eval mode) and its metadata; refuses if it changed since training.

    ``reader`` is a StageRun's ``read`` so the stage records the VAE as an input.
    """
    run_dir.check_current(files.vae, files.train_key, force)
    read = reader or (lambda path, what: run_dir.load_tensors(path, what))
    tensors, metadata = read(files.vae, f"trained VAE{files.flag}")
    try:
        config = VAEConfig.from_json(metadata["config"])
        model = VAE(config)
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise GeovqError(
            f"{run_dir.file(files.vae)} does not hold a geovq VAE ({error}); "
            f"rerun `geovq train-vae{files.flag}`"
        ) from None
    return model.to(device).eval(), metadata


def run_data_settings(run_dir: RunDir, files: VaeFiles = VaeFiles()) -> DataSettings:
    """The dataset settings the VAE was trained on, as recorded in the manifest."""
    record = run_dir.stage(files.train_key)
    if record is None:
        raise GeovqError(
            f"no trained VAE recorded in {run_dir.path}; run `geovq train-vae{files.flag}` "
            "first (or check --run-dir)"
        )
    return DataSettings(**record["settings"]["data"])


def load_latents(
    run_dir: RunDir, force: bool, reader=None, files: VaeFiles = VaeFiles()
) -> tuple[dict[str, torch.Tensor], dict]:
    """``latents.safetensors``: {split}.mu / .logvar / .labels and its metadata."""
    run_dir.check_current(files.latents, files.extract_key, force)
    read = reader or (lambda path, what: run_dir.load_tensors(path, what))
    return read(files.latents, f"latents{files.flag}")


def latent_splits(latents: dict[str, torch.Tensor]) -> list[str]:
    """Split names in a latents file, run's own first (train, test), extras after."""
    names = sorted({key.rsplit(".", 1)[0] for key in latents})
    own = [name for name in ("train", "test") if name in names]
    return own + [name for name in names if name not in own]


def latent_grid(metadata: dict[str, str]) -> tuple[int, int] | None:
    grid = json.loads(metadata.get("grid", "null"))
    return tuple(grid) if grid else None


def split_images(
    run_dir: RunDir, latents_meta: dict[str, str], files: VaeFiles = VaeFiles()
) -> dict[str, torch.Tensor]:
    """uint8 images of every split in the latents file: the run's own and ``--as`` extras."""
    from geovq.data import load_dataset

    own = load_dataset(run_data_settings(run_dir, files))
    images = {name: split.images for name, split in own.splits.items()}
    for name, data_json in json.loads(latents_meta.get("extra_splits", "{}")).items():
        images[name] = load_dataset(DataSettings(**data_json)).whole().images
    return images


def first_trained_record(run_dir: RunDir) -> dict | None:
    """The manifest record of the run's first trained model (VAE or VQ-VAE): it fixes the
    run's dataset settings."""
    stages = run_dir.manifest()["stages"]
    for key in stages:
        if key == "train-vae" or key.startswith(("train-vae/", "train-vqvae/")):
            return stages[key]
    return None


@torch.no_grad()
def decoded_mse(
    decode, latents: torch.Tensor, images_u8: torch.Tensor, device: torch.device, batch: int = 1000
) -> float:
    """MSE per pixel between sigmoid(decode(latents)) and the images, from the split's totals."""
    from geovq.data import to_float

    sq_err = 0.0
    for start in range(0, latents.shape[0], batch):
        recon = torch.sigmoid(decode(latents[start : start + batch].to(device))).float()
        target = to_float(images_u8[start : start + batch].to(device))
        sq_err += float(((recon - target) ** 2).sum())
    return sq_err / images_u8[0].numel() / images_u8.shape[0]
