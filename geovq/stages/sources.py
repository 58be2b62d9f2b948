"""A *source* is a quantization: codes per split plus a way to decode codes into images.

Post-hoc ones (``quant/<name>``: codebook of the VAE's latent chunks, decoded by the VAE's
decoder or its refit) and end-to-end ones (``vqvae/<name>``: decoded by the VQ-VAE) load into
the same ``Source``, so the prior, ``sample`` and ``compare`` treat them alike.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from geovq import GeovqError
from geovq.artifacts import (
    CodesMeta,
    PriorFiles,
    Quantization,
    Reader,
    VaeFiles,
    first_trained_record,
    list_quantizations,
    load_codebook,
    load_codes,
    load_latents,
    load_prior,
    load_refit_decoder,
    load_vae,
    load_vqvae,
    recorded_data,
    recorded_vaes,
)
from geovq.quant.codebook import (
    QuantizerFit,
    assign_codes,
    chunk_latents,
    codeword_latents,
    restore_fit,
)
from geovq.rundir import RunDir
from geovq.settings import DataSettings, QuantizeSettings

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
    # Post-hoc codes for a split the codes file lacks: its latents assigned with the
    # quantization's own rule (split -> codes, or None without latents of that split).
    _assign: Callable[[str], torch.Tensor | None] | None = None
    variant: str = ""  # e.g. "vae decoder": the same codes shown another way
    on_the_fly: set[str] = field(default_factory=set)  # splits add_split made codes for

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

    @property
    def training_stages(self) -> list[str]:
        """The stages whose work made this source, as it decodes: a post-hoc one's VAE, its
        latents, the codebook and (decoding through it) the refit decoder; a VQ-VAE's own."""
        quant = Quantization.parse(self.name)
        if not quant.posthoc:
            return [quant.key]
        vae = VaeFiles(self.metadata.vae)
        stages = [vae.train_key, vae.extract_key, quant.key]
        return stages + ([quant.refit_key] if self.decoder == quant.decoder else [])

    def add_split(self, split: str, images_u8: torch.Tensor, labels: torch.Tensor) -> bool:
        """Codes for a split the codes file lacks (e.g. added by ``extract --as``), made on the
        fly and written nowhere; False where this source cannot make them."""
        if split in self.codes:
            return True
        codes = self._assign(split) if self._assign is not None else None
        if codes is None and self._encode is not None:
            codes = self.encode(images_u8)
        if codes is None:
            return False
        self.codes[split], self.labels[split] = codes, labels
        self.on_the_fly.add(split)
        return True

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


class RunModels:
    """The run's VAEs, latents, sources and priors, each read (verified) and loaded once:
    ``compare`` reads them all, the other stages one source through ``load_source``."""

    def __init__(self, reader: Reader, device: torch.device) -> None:
        self.reader = reader
        self.run_dir = reader.run_dir
        self.device = device
        self._vaes: dict[VaeFiles, tuple] = {}
        self._latents: dict[VaeFiles, tuple] = {}
        self._priors: dict[str, object] = {}

    def vae(self, files: VaeFiles):
        if files not in self._vaes:
            self._vaes[files] = load_vae(self.reader, self.device, files)
        return self._vaes[files]

    def latents(self, files: VaeFiles):
        if files not in self._latents:
            self._latents[files] = load_latents(self.reader, files)
        return self._latents[files]

    def prior(self, source: Source):
        """The source's prior, or None where it has none; a changed prior, or one trained on
        other codes, is refused (GeovqError), never silently left out."""
        if source.name not in self._priors:
            files = PriorFiles(Quantization.parse(source.name))
            prior = None
            if self.run_dir.exists(files.path):
                prior = load_prior(self.reader, files, source.codes_sha256, self.device)
            self._priors[source.name] = prior
        return self._priors[source.name]

    def source(self, name: str, use_refit: bool = True) -> Source:
        """A quantization by name, every file verified; a clear error naming the available
        ones if it is missing. A post-hoc source decodes through its refit decoder when it has
        one, unless ``use_refit`` is False (to show both)."""
        reader = self.reader
        quant = Quantization.parse(name)
        if not reader.run_dir.exists(quant.codes):
            available = (
                ", ".join(list_sources(reader.run_dir)) or "none (run `geovq quantize` first)"
            )
            raise GeovqError(
                f"source {quant.source} has no codes in {reader.run_dir.path}; "
                f"available: {available}"
            )
        tensors, meta = load_codes(reader, quant)
        codes = {
            key.removesuffix(".codes"): t for key, t in tensors.items() if key.endswith(".codes")
        }
        labels = {
            key.removesuffix(".labels"): t for key, t in tensors.items() if key.endswith(".labels")
        }
        encode = assign = None
        if quant.posthoc:
            decode, decoder, assign = self._posthoc(quant, meta, use_refit)
        else:
            decode, decoder, encode = _vqvae_model(reader, quant, self.device)
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
            _assign=assign,
        )

    def _posthoc(self, quant: Quantization, meta: CodesMeta, use_refit: bool):
        """Decoder (the VAE's, or its refit) and code assignment of a post-hoc source."""
        device = self.device
        files = VaeFiles(meta.vae)
        vae, _ = self.vae(files)
        codebook, _ = load_codebook(self.reader, quant)
        on_device = codebook.to(device)
        decoder = files.vae
        if use_refit and self.run_dir.exists(quant.decoder):
            weights = load_refit_decoder(self.reader, quant)
            vae = copy.deepcopy(vae)  # the plain VAE stays as loaded for the other sources
            vae.load_state_dict(
                {**vae.state_dict(), **{k: v.to(device) for k, v in weights.items()}}
            )
            decoder = quant.decoder

        def decode(codes: torch.Tensor) -> torch.Tensor:
            latents = codeword_latents(on_device, codes.reshape(codes.shape[0], -1).to(device))
            return vae.decode(latents)

        restored: list[QuantizerFit] = []

        def assign(split: str) -> torch.Tensor | None:
            latents, _ = self.latents(files)
            if f"{split}.mu" not in latents:
                return None
            options = _quantize_options(self.reader, quant)
            if not restored:
                fit_mu, fit_sigma = chunk_gaussians(latents, meta.fit_split or "train", meta.chunks)
                try:
                    fit = restore_fit(
                        codebook,
                        fit_mu,
                        fit_sigma,
                        knn=options.knn,
                        edge_weight=options.edge_weight,
                    )
                except ValueError as error:
                    raise GeovqError(
                        f"{quant.source}: {error}; rerun `geovq quantize` for it with --force"
                    ) from None
                restored.append(fit)
            mu, sigma = chunk_gaussians(latents, split, meta.chunks)
            codes = assign_codes(restored[0], mu, sigma, assign=options.assign)
            return codes.reshape(-1, *meta.grid)

        return decode, decoder, assign


def load_source(
    reader: Reader | RunDir, name: str, device: torch.device, use_refit: bool = True
) -> Source:
    """One quantization by name (see ``RunModels.source``)."""
    reader = reader if isinstance(reader, Reader) else Reader(reader)
    return RunModels(reader, device).source(name, use_refit)


def require_source(run_dir: RunDir, name: str | None) -> str:
    if name:
        return name
    available = ", ".join(list_sources(run_dir)) or "none (run `geovq quantize` first)"
    raise GeovqError(f"--source is required (quant/<name> or vqvae/<name>); available: {available}")


@dataclass
class RunImages:
    """uint8 images (N, C, H, W) and labels (N,) per split: the run's own and ``--as`` extras."""

    images: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: set[str] = field(default_factory=set)  # splits added by ``extract --as``


def run_images(models: RunModels) -> RunImages:
    """The run's own dataset (fixed by its first trained model) plus every VAE's extra splits."""
    from geovq.data import load_dataset

    run_dir = models.run_dir
    first = first_trained_record(models.reader.manifest)
    if first is None:
        raise GeovqError(
            f"no trained model recorded in {run_dir.path}; run `geovq train-vae` first"
        )
    dataset = load_dataset(recorded_data(first, str(run_dir.manifest_path)))
    data = RunImages(
        {name: split.images for name, split in dataset.splits.items()},
        {name: split.labels for name, split in dataset.splits.items()},
    )
    for files in latents_vaes(models):
        _, meta = models.latents(files)
        for name, data_json in meta.extra_splits.items():
            extra = load_dataset(DataSettings(**data_json)).whole()
            data.images[name], data.labels[name] = extra.images, extra.labels
            data.extras.add(name)
    return data


def latents_vaes(models: RunModels) -> list[VaeFiles]:
    """Every VAE recorded in the run that has latents."""
    return [
        files
        for files in recorded_vaes(models.reader.manifest)
        if models.run_dir.exists(files.latents)
    ]


def chunk_gaussians(
    latents: dict[str, torch.Tensor], split: str, chunks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's latents ({split}.mu, {split}.logvar (N, D)) as chunk Gaussians mu, sigma
    (N, L, C), L = chunks."""
    mu = chunk_latents(latents[f"{split}.mu"], chunks)
    sigma = chunk_latents(torch.exp(0.5 * latents[f"{split}.logvar"]), chunks)
    return mu, sigma


def _quantize_options(reader: Reader, quant: Quantization) -> QuantizeSettings:
    """The settings quantize fitted this source with (its assignment rule, graph size)."""
    record = reader.record_of(quant.key) or {}
    return QuantizeSettings.model_validate(record.get("settings", {}).get("quantize", {}))


def has_refit_decoder(run_dir: RunDir, name: str) -> bool:
    quant = Quantization.parse(name)
    return run_dir.exists(quant.decoder)


def _vqvae_model(reader: Reader, quant: Quantization, device: torch.device):
    model, _ = load_vqvae(reader, quant, device)

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return model.decode_codes(codes.to(device))

    def encode(images_u8: torch.Tensor) -> torch.Tensor:
        return model.codes_for(images_u8.to(device).float() / 255.0)

    return decode, quant.model, encode
