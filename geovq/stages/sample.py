"""``geovq sample``: generate images.

Modes: ``prior`` (ancestral sampling from the source's PixelCNN, then its decoder),
``random`` (uniform random codes: the baseline without a prior), ``vae`` (z ~ N(0, I) through
the VAE decoder: the continuous baseline). A VQ-VAE is sampled with ``--source vqvae/<name>``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from geovq import GeovqError, memory
from geovq.artifacts import PriorFiles, Quantization, Reader, SamplesFiles, VaeFiles, load_vae
from geovq.artifacts import load_prior as load_prior_artifact
from geovq.models.pixelcnn import GatedPixelCNN, sample_codes
from geovq.progress import NullProgress
from geovq.rundir import RunDir, atomic_write_bytes, os_error_message
from geovq.settings import Settings
from geovq.stages.record import StageResult, StageRun, stage
from geovq.stages.sources import Source, load_source, require_source
from geovq.training import resolve_device

GRID_COLUMNS = 8


def load_prior(reader: Reader, source: Source, device: torch.device) -> GatedPixelCNN:
    """The source's prior, verified; refuses one trained on other (or since changed) codes."""
    files = PriorFiles(Quantization.parse(source.name))
    return load_prior_artifact(reader, files, source.codes_sha256, device)


def samples_files(settings: Settings) -> SamplesFiles:
    """Where this sampling's outputs go (from the settings alone: known before any work)."""
    options = settings.sample
    if options.mode == "vae":
        return SamplesFiles(f"vae{VaeFiles(settings.vae.name).suffix}", options.mode)
    name = options.source
    if not name:
        return SamplesFiles("", options.mode)
    return SamplesFiles(Quantization.parse(name).slug, options.mode)


def generate(
    settings: Settings, reader: Reader, device: torch.device, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Images (n, C, H, W) in [0, 1], their codes (or None), extra info."""
    options = settings.sample
    if options.mode == "vae":
        files = VaeFiles(settings.vae.name)
        vae, _ = load_vae(reader, device, files)
        shape = (vae.config.channels, vae.config.height, vae.config.width)
        _check_memory(options.n, shape, 0.0, device)
        z = torch.randn(options.n, vae.config.total_latent_dim, generator=generator, device=device)
        with torch.no_grad():
            images = torch.sigmoid(vae.decode(z)).float().cpu()
        return images, None, {"decoder": files.vae}
    source = load_source(reader, options.source, device)
    if options.top_k > source.k:
        raise GeovqError(f"--top-k {options.top_k} is larger than K={source.k}; use 0..{source.k}")
    shape = tuple(source.decode(torch.zeros(1, *source.grid, dtype=torch.long)).shape[1:])
    prior_floats = 0.0
    if options.mode == "prior":
        prior = load_prior(reader, source, device)
        config = prior.config
        prior_floats = memory.pixelcnn_activations(
            config.hidden, config.layers, source.positions, config.num_codes
        )
    _check_memory(options.n, shape, prior_floats, device)
    if options.mode == "random":
        codes = torch.randint(
            source.k, (options.n, *source.grid), generator=generator, device=device
        )
        return source.decode(codes), codes.cpu(), {"decoder": source.decoder}
    labels = _labels(prior, options.class_label, options.n, device)
    codes = sample_codes(
        prior,
        options.n,
        temperature=options.temperature,
        top_k=options.top_k,
        labels=labels,
        generator=generator,
    )
    return source.decode(codes), codes.cpu(), {"decoder": source.decoder}


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    """Samples into the run (``samples/<source>/``, recorded), or with ``--out FILE`` into that
    file alone: the run's recorded samples and manifest stay as they were."""
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    options = settings.sample
    if options.mode != "vae":
        require_source(run_dir, options.source)
    files = samples_files(settings)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    if options.out is not None:
        reader = Reader(run_dir, settings.force)
        images, _, info = generate(settings, reader, device, generator)
        _write_png(_png_bytes(images), Path(options.out))
        metrics = _metrics(settings, Path(options.out), info)
        rows = [[k, str(v)] for k, v in metrics.items()]
        return StageResult(files.key, metrics, {}, title="sample", rows=rows)
    record = StageRun(run_dir, files.key, None, device, settings.seed, settings.force)
    record.settle({"sample": json.loads(options.model_dump_json()), "seed": settings.seed})
    images, codes, info = generate(settings, record, device, generator)
    tensors = {"images": images} | ({"codes": codes} if codes is not None else {})
    record.write(files.tensors, tensors, {"mode": options.mode, **info})
    record.write_bytes(files.png, _png_bytes(images))
    metrics = _metrics(settings, run_dir.file(files.png), info)
    record.finish(metrics)
    rows = [[k, str(v)] for k, v in metrics.items()]
    return StageResult(files.key, metrics, record.outputs, title="sample", rows=rows)


def _metrics(settings: Settings, png: Path, info: dict) -> dict:
    options = settings.sample
    return {"mode": options.mode, "n": options.n, "png": str(png), "source": options.source, **info}


def _check_memory(n: int, image_shape: tuple, prior_floats: float, device) -> None:
    """--n images at once (and the prior's activations while it samples them) must fit."""
    need = memory.images_bytes(n, image_shape) + n * prior_floats * memory.FLOAT
    memory.require(need, device, f"sample --n {n}", "use a smaller --n")


def _labels(prior: GatedPixelCNN, class_label: int | None, n: int, device) -> torch.Tensor | None:
    classes = prior.config.num_classes
    if class_label is None:
        if classes:
            raise GeovqError(f"this prior is class-conditional; pass --class 0..{classes - 1}")
        return None
    if not classes:
        raise GeovqError("--class needs a conditional prior (train-prior --conditional)")
    if not 0 <= class_label < classes:
        raise GeovqError(f"--class {class_label} is out of range; use 0..{classes - 1}")
    return torch.full((n,), class_label, dtype=torch.long, device=device)


def _png_bytes(images: torch.Tensor) -> bytes:
    """A tiled grid (torchvision make_grid/save_image) as PNG bytes."""
    buffer = io.BytesIO()
    save_image(make_grid(images, nrow=GRID_COLUMNS, padding=2, pad_value=1.0), buffer, format="png")
    return buffer.getvalue()


def _write_png(data: bytes, path: Path) -> None:
    """``--out``: outside the run directory, written atomically."""
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise GeovqError(
            f"cannot write --out {path}: {os_error_message(error)}; or choose a writable --out"
        ) from None
