"""A *source* is a quantization: codes per split plus a way to decode codes into images.

Post-hoc ones (``quant/<name>``: codebook of the VAE's latent chunks, decoded by the VAE's
decoder or its refit) and end-to-end ones (``vqvae/<name>``: decoded by the VQ-VAE) load into
the same ``Source``, so the prior, ``sample`` and ``compare`` treat them alike.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from geovq import GeovqError
from geovq.rundir import RunDir

DECODE_BATCH = 1000


@dataclass
class Source:
    name: str  # "quant/w2-k256" or "vqvae/vqvae-2x4-k256"
    kind: str  # "posthoc" | "vqvae"
    k: int
    grid: tuple[int, int]
    per_position: bool
    codes: dict[str, torch.Tensor]  # split -> (N, H, W) int64
    labels: dict[str, torch.Tensor]
    codes_sha256: str
    decoder: str  # which weights decode the codes (shown in reports)
    metadata: dict[str, str]
    _decode_logits: Callable[[torch.Tensor], torch.Tensor]
    # VQ-VAEs can encode new images (e.g. an ``extract --as`` split); post-hoc codes come from
    # ``quantize``, which assigns every split of the latents.
    _encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    variant: str = ""  # e.g. "vae decoder": the same codes shown another way

    @property
    def label(self) -> str:
        """Display name: the source name, plus the variant if any."""
        return f"{self.name} [{self.variant}]" if self.variant else self.name

    @property
    def slug(self) -> str:
        return slug(self.label)

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def bits_per_image(self) -> float:
        return self.positions * math.log2(self.k)

    @torch.no_grad()
    def encode(self, images_u8: torch.Tensor) -> torch.Tensor | None:
        """(N, C, H, W) uint8 -> (N, H, W) codes, or None where this source cannot encode."""
        if self._encode is None:
            return None
        parts = [
            self._encode(images_u8[i : i + DECODE_BATCH]).cpu()
            for i in range(0, images_u8.shape[0], DECODE_BATCH)
        ]
        return torch.cat(parts)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, H, W) codes -> (N, C, H_img, W_img) images in [0, 1] on the CPU, batched."""
        parts = [
            torch.sigmoid(self._decode_logits(codes[i : i + DECODE_BATCH])).float().cpu()
            for i in range(0, codes.shape[0], DECODE_BATCH)
        ]
        return torch.cat(parts)


def slug(name: str) -> str:
    """'quant/w2-k256' -> 'quant-w2-k256' (a file-name-safe form of a source name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def list_sources(run_dir: RunDir) -> list[str]:
    """Every quantization in the run, post-hoc first, each sorted by name."""
    found = []
    for family in ("quant", "vqvae"):
        folder = run_dir.path / family
        if folder.is_dir():
            found += [
                f"{family}/{p.name}"
                for p in sorted(folder.iterdir())
                if (p / "codes.safetensors").is_file()
            ]
    return found


def producer_key(name: str) -> str:
    family, short = name.split("/", 1)
    return f"quantize/{short}" if family == "quant" else f"train-vqvae/{short}"


def load_source(
    run_dir: RunDir, name: str, device: torch.device, force: bool = False, use_refit: bool = True
) -> Source:
    """Load a quantization by name; a clear error naming the available ones if it is missing.

    A post-hoc source decodes through its refit decoder when it has one, unless ``use_refit``
    is False (to show both).
    """
    name = name.strip("/")
    if "/" not in name or name.split("/", 1)[0] not in ("quant", "vqvae"):
        raise GeovqError(
            f"source {name!r} is not of the form quant/<name> or vqvae/<name>; "
            f"available: {', '.join(list_sources(run_dir)) or 'none'}"
        )
    codes_path = f"{name}/codes.safetensors"
    if not run_dir.exists(codes_path):
        available = ", ".join(list_sources(run_dir)) or "none (run `geovq quantize` first)"
        raise GeovqError(f"source {name} has no codes in {run_dir.path}; available: {available}")
    run_dir.check_current(codes_path, producer_key(name), force)
    tensors, metadata = run_dir.load_tensors(codes_path, f"codes of {name}")
    codes = {key.removesuffix(".codes"): t for key, t in tensors.items() if key.endswith(".codes")}
    labels = {
        key.removesuffix(".labels"): t for key, t in tensors.items() if key.endswith(".labels")
    }
    encode = None
    if metadata.get("kind") == "posthoc":
        decode, decoder = _posthoc_decoder(run_dir, name, metadata, device, force, use_refit)
    else:
        decode, decoder, encode = _vqvae_model(run_dir, name, device)
    return Source(
        name=name,
        kind=metadata.get("kind", "vqvae"),
        k=int(metadata["k"]),
        grid=tuple(json.loads(metadata["grid"])),
        per_position=metadata.get("per_position") == "true",
        codes=codes,
        labels=labels,
        codes_sha256=run_dir.sha256(codes_path),
        decoder=decoder,
        metadata=metadata,
        _decode_logits=decode,
        _encode=encode,
    )


def has_refit_decoder(run_dir: RunDir, name: str) -> bool:
    return run_dir.exists(f"{name}/decoder.safetensors")


def _posthoc_decoder(
    run_dir: RunDir, name: str, metadata: dict, device: torch.device, force: bool, use_refit: bool
):
    from geovq.quant.codebook import Codebook, codeword_latents
    from geovq.stages.loaders import VaeFiles, load_vae

    vae, _ = load_vae(run_dir, device, force, files=VaeFiles(metadata.get("vae") or None))
    tensors, _ = run_dir.load_tensors(f"{name}/codebook.safetensors", f"codebook of {name}")
    codebook = Codebook(
        tensors["mu"].to(device), tensors["sigma"].to(device), metadata.get("metric", "")
    )
    decoder = "vae.safetensors"
    refit = f"{name}/decoder.safetensors"
    if use_refit and run_dir.exists(refit):
        weights, _ = run_dir.load_tensors(refit, f"refit decoder of {name}")
        vae.load_state_dict({**vae.state_dict(), **{k: v.to(device) for k, v in weights.items()}})
        decoder = refit

    def decode(codes: torch.Tensor) -> torch.Tensor:
        latents = codeword_latents(codebook, codes.reshape(codes.shape[0], -1).to(device))
        return vae.decode(latents)

    return decode, decoder


def _vqvae_model(run_dir: RunDir, name: str, device: torch.device):
    from geovq.models.vqvae import VQVAE, VQVAEConfig

    tensors, metadata = run_dir.load_tensors(f"{name}/model.safetensors", f"model of {name}")
    model = VQVAE(VQVAEConfig.from_json(metadata["config"]))
    model.load_state_dict(tensors)
    model.to(device).eval()

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return model.decode_codes(codes.to(device))

    def encode(images_u8: torch.Tensor) -> torch.Tensor:
        return model.codes_for(images_u8.to(device).float() / 255.0)

    return decode, f"{name}/model.safetensors", encode
