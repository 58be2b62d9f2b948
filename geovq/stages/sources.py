"""A *source* is a quantization: codes per split plus a way to decode codes into images.

Post-hoc ones (``quant/<name>``: codebook of the VAE's latent chunks, decoded by the VAE's
decoder or its refit) and end-to-end ones (``vqvae/<name>``: decoded by the VQ-VAE) load into
the same ``Source``, so the prior, ``sample`` and ``compare`` treat them alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from geovq import GeovqError
from geovq.artifacts import (
    CodesMeta,
    Quantization,
    Reader,
    VaeFiles,
    list_quantizations,
    load_codebook,
    load_codes,
    load_refit_decoder,
    load_vae,
    load_vqvae,
)
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
    metadata: CodesMeta
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
    """Every quantization recorded in the run, post-hoc first, each sorted by name."""
    return [quant.source for quant in list_quantizations(run_dir)]


def load_source(
    reader: Reader | RunDir, name: str, device: torch.device, use_refit: bool = True
) -> Source:
    """Load a quantization by name, every file verified; a clear error naming the available
    ones if it is missing.

    A post-hoc source decodes through its refit decoder when it has one, unless ``use_refit``
    is False (to show both).
    """
    reader = reader if isinstance(reader, Reader) else Reader(reader)
    quant = Quantization.parse(name)
    if not reader.run_dir.exists(quant.codes):
        available = ", ".join(list_sources(reader.run_dir)) or "none (run `geovq quantize` first)"
        raise GeovqError(
            f"source {quant.source} has no codes in {reader.run_dir.path}; available: {available}"
        )
    tensors, meta = load_codes(reader, quant)
    codes = {key.removesuffix(".codes"): t for key, t in tensors.items() if key.endswith(".codes")}
    labels = {
        key.removesuffix(".labels"): t for key, t in tensors.items() if key.endswith(".labels")
    }
    encode = None
    if quant.posthoc:
        decode, decoder = _posthoc_decoder(reader, quant, meta, device, use_refit)
    else:
        decode, decoder, encode = _vqvae_model(reader, quant, device)
    return Source(
        name=quant.source,
        kind="posthoc" if quant.posthoc else "vqvae",
        k=meta.k,
        grid=meta.grid,
        per_position=meta.per_position,
        codes=codes,
        labels=labels,
        codes_sha256=reader.inputs[quant.codes],
        decoder=decoder,
        metadata=meta,
        _decode_logits=decode,
        _encode=encode,
    )


def has_refit_decoder(run_dir: RunDir, name: str) -> bool:
    quant = Quantization.parse(name)
    return run_dir.exists(quant.decoder)


def _posthoc_decoder(
    reader: Reader, quant: Quantization, meta: CodesMeta, device: torch.device, use_refit: bool
):
    from geovq.quant.codebook import Codebook, codeword_latents

    files = VaeFiles(meta.vae)
    vae, _ = load_vae(reader, device, files)
    tensors, _ = load_codebook(reader, quant)
    codebook = Codebook(tensors["mu"].to(device), tensors["sigma"].to(device), meta.metric or "")
    decoder = files.vae
    if use_refit and reader.run_dir.exists(quant.decoder):
        weights = load_refit_decoder(reader, quant)
        vae.load_state_dict({**vae.state_dict(), **{k: v.to(device) for k, v in weights.items()}})
        decoder = quant.decoder

    def decode(codes: torch.Tensor) -> torch.Tensor:
        latents = codeword_latents(codebook, codes.reshape(codes.shape[0], -1).to(device))
        return vae.decode(latents)

    return decode, decoder


def _vqvae_model(reader: Reader, quant: Quantization, device: torch.device):
    model, _ = load_vqvae(reader, quant, device)

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return model.decode_codes(codes.to(device))

    def encode(images_u8: torch.Tensor) -> torch.Tensor:
        return model.codes_for(images_u8.to(device).float() / 255.0)

    return decode, quant.model, encode
