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

from geovq import GeovqError
from geovq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig, sample_codes
from geovq.progress import NullProgress
from geovq.rundir import RunDir, atomic_write_bytes
from geovq.settings import Settings
from geovq.stages.loaders import VaeFiles, load_vae
from geovq.stages.record import StageResult, StageRun
from geovq.stages.sources import Source, load_source
from geovq.stages.train_prior import prior_path, require_source
from geovq.training import resolve_device

GRID_COLUMNS = 8


def load_prior(run_dir: RunDir, source: Source, device: torch.device, force: bool) -> GatedPixelCNN:
    """The source's prior; refuses one trained on other (or since changed) codes."""
    path = prior_path(source.name)
    if not run_dir.exists(path):
        raise GeovqError(
            f"no prior for {source.name}; run `geovq train-prior --source {source.name}` first"
        )
    tensors, metadata = run_dir.load_tensors(path, f"prior of {source.name}")
    if metadata.get("source") != source.name:
        raise GeovqError(
            f"{run_dir.file(path)} was trained on {metadata.get('source')}, not {source.name}"
        )
    if metadata.get("source_codes_sha256") != source.codes_sha256 and not force:
        raise GeovqError(
            f"the codes of {source.name} changed since its prior was trained; rerun "
            f"`geovq train-prior --source {source.name}` or pass --force"
        )
    model = GatedPixelCNN(PixelCNNConfig.from_json(metadata["config"]))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def generate(
    settings: Settings, run_dir: RunDir, device: torch.device, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, str, dict]:
    """Images (n, C, H, W) in [0, 1], their codes (or None), the folder slug, extra info."""
    options = settings.sample
    if options.mode == "vae":
        files = VaeFiles(settings.vae.name)
        vae, _ = load_vae(run_dir, device, settings.force, files=files)
        z = torch.randn(options.n, vae.config.total_latent_dim, generator=generator, device=device)
        with torch.no_grad():
            images = torch.sigmoid(vae.decode(z)).float().cpu()
        return images, None, f"vae{files.suffix}", {"decoder": files.vae}
    name = require_source(run_dir, options.source)
    source = load_source(run_dir, name, device, settings.force)
    if options.top_k > source.k:
        raise GeovqError(f"--top-k {options.top_k} is larger than K={source.k}; use 0..{source.k}")
    if options.mode == "random":
        codes = torch.randint(
            source.k, (options.n, *source.grid), generator=generator, device=device
        )
        return source.decode(codes), codes.cpu(), source.slug, {"decoder": source.decoder}
    prior = load_prior(run_dir, source, device, settings.force)
    labels = _labels(prior, options.class_label, options.n, device)
    codes = sample_codes(
        prior,
        options.n,
        temperature=options.temperature,
        top_k=options.top_k,
        labels=labels,
        generator=generator,
    )
    return source.decode(codes), codes.cpu(), source.slug, {"decoder": source.decoder}


def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    options = settings.sample
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    images, codes, folder, info = generate(settings, run_dir, device, generator)
    stem = "samples" if options.mode == "prior" else options.mode
    png = Path(options.out) if options.out else run_dir.file(f"samples/{folder}/{stem}.png")
    _write_png(images, png)
    key = f"sample/{folder}/{options.mode}"
    record = StageRun(
        run_dir,
        key,
        {"sample": json.loads(options.model_dump_json()), "seed": settings.seed},
        device,
        settings.seed,
    )
    tensors = {"images": images} | ({"codes": codes} if codes is not None else {})
    record.write(f"samples/{folder}/{stem}.safetensors", tensors, {"mode": options.mode, **info})
    metrics = {
        "mode": options.mode,
        "n": options.n,
        "png": str(png),
        "source": options.source,
        **info,
    }
    record.finish(metrics)
    rows = [[k, str(v)] for k, v in metrics.items()]
    return StageResult(key, metrics, record.outputs, title="sample", rows=rows)


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


def _write_png(images: torch.Tensor, path: Path) -> None:
    """A tiled grid (torchvision make_grid/save_image), written atomically."""
    buffer = io.BytesIO()
    save_image(make_grid(images, nrow=GRID_COLUMNS, padding=2, pad_value=1.0), buffer, format="png")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as error:
        raise GeovqError(
            f"cannot write {path} ({error.strerror}); choose a writable --out"
        ) from None
