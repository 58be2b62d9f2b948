"""``geovq compare``: the evidence, side by side, for every quantization in the run.

Per source and split: reconstruction MSE/PSNR/SSIM, bits per image, code usage, prior NLL
(beside uniform and unigram). Sample quality through a small classifier trained on the run's
train split (cached under ``report/``): Fréchet distance of its features between samples and
real test images, and class agreement for conditional priors. Quantizations are paired at equal
bits per image; ``--sweep-k`` adds rate–distortion points. Writes ``report/metrics.json``,
``report/report.md`` and PNG figures.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from geovq import GeovqError, memory
from geovq.artifacts import (
    REPORT_CLASSIFIER,
    REPORT_DIR,
    REPORT_KEY,
    REPORT_MARKDOWN,
    REPORT_METRICS,
    VaeFiles,
    first_trained_record,
    load_latents,
    load_vae,
    recorded_data,
    recorded_vaes,
)
from geovq.data import load_dataset, stratified_head, to_float
from geovq.metrics import frechet_distance, mse_per_pixel, psnr, ssim, summarize_codes
from geovq.models.classifier import (
    ClassifierConfig,
    SmallClassifier,
    accuracy,
    extract_features,
    train_classifier,
)
from geovq.models.pixelcnn import sample_codes
from geovq.progress import NullProgress
from geovq.rundir import RunDir, parse_tensors, read_file, strict_json
from geovq.settings import DataSettings, Settings, parse_k_list
from geovq.stages.record import StageResult, StageRun, stage
from geovq.stages.sources import Source, has_refit_decoder, list_sources, load_source
from geovq.stages.train_prior import code_baselines, prior_path, split_bits_per_code
from geovq.training import resolve_device

STAGE = REPORT_KEY
REPORT = REPORT_DIR
CLASSIFIER = REPORT_CLASSIFIER
IMAGES_SHOWN = 10


@dataclass
class RunImages:
    """Real images per split (uint8) and labels, loaded once."""

    images: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    options = settings.compare
    record = StageRun(run_dir, STAGE, None, device, settings.seed, settings.force)
    names = list_sources(run_dir)
    if not names:
        raise GeovqError(
            f"no quantization in {run_dir.path}; run `geovq quantize` (post hoc) or "
            "`geovq train-vqvae` (end to end) first"
        )
    record.settle({"compare": json.loads(options.model_dump_json()), "seed": settings.seed})
    data = _run_images(record)
    image_shape = tuple(data.images["train"].shape[1:])
    memory.require(
        memory.images_bytes(options.samples, image_shape, copies=8),
        device,
        f"compare --samples {options.samples}",
        "use a smaller --samples",
    )
    sources = _load_sources(record, names, data, device)
    missing = [s.label for s in sources if options.split not in s.codes]
    sources = [s for s in sources if options.split in s.codes]
    if not sources:
        raise GeovqError(
            f"--split {options.split} is in no quantization; choose one of {', '.join(data.images)}"
        )
    vaes = _recorded_vaes(record)

    progress.start("compare: reconstructions", total=len(sources) + len(vaes))
    entries = {}
    for source in sources:
        entries[source.label] = _source_entry(record, source, data, device)
        progress.advance(1)
    references = {}
    for files in vaes:
        references[files.vae] = _vae_entry(record, files, data, device)
        progress.advance(1)
    progress.finish()

    quality = _sample_quality(record, sources, vaes, data, settings, device, progress)
    pairs = equal_rate_pairs(entries, options.split)
    skipped: list[str] = []
    sweep = (
        _sweep(record, entries, options, settings, device, progress, skipped)
        if options.sweep_k
        else []
    )
    metrics = {
        "split": options.split,
        "sources": entries,
        "vae_reference": references,
        "sample_quality": quality,
        "equal_rate_pairs": pairs,
        "rate_distortion": rate_points(entries, options.split) + sweep,
        "sweep_skipped": skipped,
    }
    figures = _figures(record, sources, data, metrics, quality, device)
    metrics["figures"] = figures
    record.write_bytes(REPORT_METRICS, strict_json(metrics).encode())
    record.write_bytes(REPORT_MARKDOWN, render_report(metrics).encode())
    record.finish({"split": options.split, "sources": list(entries), "equal_rate_pairs": pairs})
    return StageResult(
        STAGE,
        metrics,
        record.outputs,
        title=f"compare ({options.split} split)",
        columns=HEADLINE_COLUMNS,
        rows=headline_rows(metrics),
        notes=[f"report: {run_dir.file(REPORT + '/report.md')}"]
        + _pair_notes(pairs)
        + skipped
        + [
            f"{name} has no {options.split} codes: rerun its stage to include it"
            for name in missing
        ],
    )


def _load_sources(record: StageRun, names: list[str], data: RunImages, device) -> list[Source]:
    """Every source; a post-hoc one with a refit decoder also as it decodes without the refit,
    and VQ-VAEs encode splits they have no codes for (e.g. added by ``extract --as``)."""
    sources = []
    for name in names:
        source = load_source(record, name, device)
        for split, images in data.images.items():
            if split not in source.codes:
                codes = source.encode(images)
                if codes is not None:
                    source.codes[split] = codes
                    source.labels[split] = data.labels[split]
        sources.append(source)
        if source.kind == "posthoc" and has_refit_decoder(record.run_dir, name):
            plain = load_source(record, name, device, use_refit=False)
            plain.variant = "vae decoder"
            sources.append(plain)
    return sources


# -- per-source figures ------------------------------------------------------------------------
def reconstruction_figures(recons: torch.Tensor, images_u8: torch.Tensor) -> dict[str, float]:
    images = to_float(images_u8)
    return {
        "mse_per_pixel": mse_per_pixel(recons, images),
        "psnr": psnr(recons, images),
        "ssim": ssim(recons, images),
    }


def _source_entry(record: StageRun, source: Source, data: RunImages, device) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": source.kind,
        "k": source.k,
        "grid": list(source.grid),
        "per_position": source.per_position,
        "bits_per_image": source.bits_per_image,
        "decoder": source.decoder,
        "metric": source.metadata.metric or "vq-vae",
        "vae": source.metadata.vae or "",
        "splits": {},
        "prior": None,
    }
    for split, codes in source.codes.items():
        figures = summarize_codes(codes, source.k, per_position=source.per_position)
        if split in data.images and data.images[split].shape[0] == codes.shape[0]:
            figures.update(reconstruction_figures(source.decode(codes), data.images[split]))
        entry["splits"][split] = figures
    entry["prior"] = _prior_figures(record, source, device)
    return entry


def _prior_figures(record: StageRun, source: Source, device) -> dict[str, Any] | None:
    from geovq.stages.sample import load_prior

    if not record.run_dir.exists(prior_path(source.name)):
        return None
    prior = load_prior(record, source, device)  # a changed or stale prior is refused
    figures: dict[str, Any] = {"conditional": prior.config.num_classes > 0, "splits": {}}
    for split, codes in source.codes.items():
        labels = source.labels.get(split) if prior.config.num_classes else None
        if labels is not None and int(labels.min()) < 0:
            continue
        bits = split_bits_per_code(
            prior, codes.to(device), None if labels is None else labels.to(device)
        )
        figures["splits"][split] = {
            "bits_per_code": bits,
            "bits_per_image": bits * source.positions,
        }
    figures.update(code_baselines(source))
    return figures


def _vae_entry(record: StageRun, files: VaeFiles, data: RunImages, device) -> dict[str, Any]:
    vae, _ = load_vae(record, device, files)
    latents, _ = load_latents(record, files)
    entry: dict[str, Any] = {
        "latent_dim": vae.config.total_latent_dim,
        "latent": vae.config.latent,
        "splits": {},
    }
    with torch.no_grad():
        for split in data.images:
            key = f"{split}.mu"
            if key not in latents:
                continue
            mu = latents[key]
            recons = torch.cat(
                [
                    torch.sigmoid(vae.decode(mu[i : i + 1000].to(device))).float().cpu()
                    for i in range(0, len(mu), 1000)
                ]
            )
            entry["splits"][split] = reconstruction_figures(recons, data.images[split])
    return entry


# -- sample quality ----------------------------------------------------------------------------
def _sample_quality(
    record: StageRun, sources, vaes, data: RunImages, settings: Settings, device, progress
) -> dict[str, Any]:
    options = settings.compare
    if "train" not in data.labels or int(data.labels["train"].min()) < 0:
        return {"skipped": "the run's data has no class labels"}
    classifier, classifier_acc = _classifier(record, data, settings, device)
    real = to_float(data.images["test"]).to(device)
    real_features = extract_features(classifier, real)
    generator = torch.Generator(device=device).manual_seed(settings.seed + 11)
    results: dict[str, Any] = {
        "classifier_test_accuracy": classifier_acc,
        "samples": options.samples,
        "sources": {},
    }
    progress.start("compare: sample quality", total=len(sources) + len(vaes))
    for source in sources:
        figures: dict[str, Any] = {}
        random_codes = torch.randint(
            source.k, (options.samples, *source.grid), generator=generator, device=device
        )
        random_images = source.decode(random_codes)
        figures["random_frechet"] = frechet_distance(
            extract_features(classifier, random_images.to(device)), real_features
        )
        prior_images = _prior_samples(record, source, options.samples, generator, device)
        if prior_images is not None:
            images, labels = prior_images
            figures["prior_frechet"] = frechet_distance(
                extract_features(classifier, images.to(device)), real_features
            )
            if labels is not None:
                figures["class_agreement"] = accuracy(
                    classifier, images.to(device), labels.to(device)
                )
        results["sources"][source.label] = figures
        progress.advance(1)
    for files in vaes:
        vae, _ = load_vae(record, device, files)
        z = torch.randn(
            options.samples, vae.config.total_latent_dim, generator=generator, device=device
        )
        with torch.no_grad():
            images = torch.sigmoid(vae.decode(z)).float()
        results["sources"][files.vae] = {
            "prior_frechet": frechet_distance(extract_features(classifier, images), real_features)
        }
        progress.advance(1)
    progress.finish()
    # The reference floor: as many real train images as samples, balanced over classes (the
    # split itself may be sorted by class).
    subset = stratified_head(data.labels["train"], min(options.samples, len(data.labels["train"])))
    real_train = to_float(data.images["train"][subset]).to(device)
    results["real_train_frechet"] = frechet_distance(
        extract_features(classifier, real_train), real_features
    )
    return results


def _prior_samples(record: StageRun, source: Source, n: int, generator, device):
    """(images, requested labels or None) from the source's prior, or None without one."""
    from geovq.stages.sample import load_prior

    if not record.run_dir.exists(prior_path(source.name)):
        return None
    prior = load_prior(record, source, device)
    classes = prior.config.num_classes
    labels = (torch.arange(n, device=device) % classes) if classes else None
    codes = sample_codes(prior, n, labels=labels, generator=generator)
    return source.decode(codes), labels


def _classifier(
    record: StageRun, data: RunImages, settings: Settings, device
) -> tuple[SmallClassifier, float]:
    """Train once on the run's train split; cached in report/classifier.safetensors (used
    only while it matches compare's record, retrained otherwise)."""
    channels, height, width = data.images["train"].shape[1:]
    num_classes = int(data.labels["train"].max()) + 1
    config = ClassifierConfig(channels, height, width, num_classes)
    key = {
        "config": config.to_json(),
        "epochs": str(settings.compare.classifier_epochs),
        "seed": str(settings.seed),
        "train_images": str(data.images["train"].shape[0]),
    }
    cached = _cached_classifier(record)
    if cached is not None:
        tensors, meta = cached
        if all(meta.get(k) == v for k, v in key.items()):
            model = SmallClassifier(config)
            model.load_state_dict(tensors)
            record.write(CLASSIFIER, tensors, meta)
            return model.to(device).eval(), float(meta["test_accuracy"])
    model = train_classifier(
        to_float(data.images["train"]).to(device),
        data.labels["train"].to(device),
        config,
        epochs=settings.compare.classifier_epochs,
        seed=settings.seed,
    )
    test_acc = accuracy(
        model, to_float(data.images["test"]).to(device), data.labels["test"].to(device)
    )
    record.write(CLASSIFIER, model.state_dict(), {**key, "test_accuracy": str(test_acc)})
    return model.eval(), test_acc


def _cached_classifier(record: StageRun):
    """The classifier compare recorded last time, if its file still matches the record."""
    recorded = (record.record_of(STAGE) or {}).get("outputs", {}).get(CLASSIFIER)
    path = record.run_dir.file(CLASSIFIER)
    if recorded is None or not path.is_file():
        return None
    data = read_file(path)
    if hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        return None
    return parse_tensors(data, path)


# -- equal rate and rate–distortion ------------------------------------------------------------
def equal_rate_pairs(entries: dict[str, dict], split: str) -> list[dict[str, Any]]:
    """Each post-hoc quantization beside every VQ-VAE with the same bits per image."""
    pairs = []
    for name, entry in entries.items():
        if entry["kind"] != "posthoc":
            continue
        for other, vq in entries.items():
            if vq["kind"] != "vqvae" or not math.isclose(
                vq["bits_per_image"], entry["bits_per_image"]
            ):
                continue
            ours, theirs = entry["splits"][split], vq["splits"][split]
            if "mse_per_pixel" not in ours or "mse_per_pixel" not in theirs:
                continue
            pairs.append(
                {
                    "posthoc": name,
                    "vqvae": other,
                    "bits_per_image": entry["bits_per_image"],
                    "posthoc_mse": ours["mse_per_pixel"],
                    "vqvae_mse": theirs["mse_per_pixel"],
                    "mse_ratio": ours["mse_per_pixel"] / theirs["mse_per_pixel"],
                    "posthoc_utilisation": ours["utilisation"],
                    "vqvae_utilisation": theirs["utilisation"],
                }
            )
    return pairs


def family_of(entry: dict[str, Any]) -> str:
    if entry["kind"] == "vqvae":
        return "vq-vae"
    latent = entry.get("vae") or "flat"
    refit = " + refit" if entry["decoder"].endswith("decoder.safetensors") else ""
    pp = " per-position" if entry["per_position"] else ""
    return f"post-hoc {entry['metric']}{pp} ({latent}){refit}"


def rate_points(entries: dict[str, dict], split: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "family": family_of(entry),
            "bits_per_image": entry["bits_per_image"],
            "mse": entry["splits"][split]["mse_per_pixel"],
        }
        for name, entry in entries.items()
        if "mse_per_pixel" in entry["splits"].get(split, {})
    ]


def _sweep(
    record: StageRun, entries, options, settings: Settings, device, progress, skipped: list[str]
) -> list[dict]:
    """Quantize again at each K of --sweep-k for every post-hoc family already in the run;
    a K larger than the family's fit points is skipped and said in ``skipped``."""
    from geovq.artifacts import split_images
    from geovq.metrics import decoded_mse
    from geovq.quant.codebook import assign_codes, chunk_latents, codeword_latents, fit_codebook

    families: dict[tuple, dict] = {}
    for name, entry in entries.items():
        if entry["kind"] == "posthoc":
            recorded = record.record_of(f"quantize/{name.removeprefix('quant/')}")
            # scalar codebooks are sized by levels, not K: they are points, not swept
            if recorded and recorded["settings"]["quantize"]["metric"] != "scalar":
                q = recorded["settings"]["quantize"]
                families.setdefault(
                    (entry["vae"], q["metric"], q["codebook"], recorded["metrics"]["chunks"]), q
                )
    points = []
    ks = parse_k_list(options.sweep_k)
    progress.start("compare: rate-distortion sweep", total=len(families) * len(ks))
    for (vae_name, metric, codebook, chunks), q in families.items():
        files = VaeFiles(vae_name or None)
        latents, meta = load_latents(record, files)
        vae, _ = load_vae(record, device, files)
        images = split_images(record, meta, files)
        fit_mu = chunk_latents(latents[f"{q['fit_split']}.mu"], chunks)
        fit_sigma = chunk_latents(torch.exp(0.5 * latents[f"{q['fit_split']}.logvar"]), chunks)
        mu = chunk_latents(latents[f"{options.split}.mu"], chunks)
        sigma = chunk_latents(torch.exp(0.5 * latents[f"{options.split}.logvar"]), chunks)
        per_position = codebook == "per-position"
        family = (
            f"post-hoc {metric}{' per-position' if per_position else ''} ({vae_name or 'flat'})"
        )
        for k in ks:
            points_available = fit_mu.shape[0] * (1 if per_position else chunks)
            if k > points_available:
                skipped.append(
                    f"sweep skipped K={k} for {family}: its fit split has only "
                    f"{points_available} points"
                )
                progress.advance(1)
                continue
            # One restart per sweep point: the sweep maps the curve; the run's own codebooks
            # are the carefully fitted points.
            options_used = {key: q[key] for key in ("iters", "tol", "knn", "edge_weight")}
            options_used["restarts"] = 1
            fit = fit_codebook(
                fit_mu,
                fit_sigma,
                k,
                metric,
                per_position=per_position,
                seed=settings.seed,
                **options_used,
            )
            codes = (
                fit.codes
                if options.split == q["fit_split"]
                else assign_codes(fit, mu, sigma, assign=q["assign"])
            )
            mse = decoded_mse(
                vae.decode, codeword_latents(fit.codebook, codes), images[options.split], device
            )
            points.append(
                {
                    "name": f"{metric}-k{k} (sweep)",
                    "family": family,
                    "bits_per_image": chunks * math.log2(k),
                    "mse": mse,
                    "sweep": True,
                }
            )
            progress.advance(1)
    progress.finish()
    return points


# -- figures and report ------------------------------------------------------------------------
def _figures(
    record: StageRun, sources, data: RunImages, metrics, quality, device
) -> dict[str, str]:
    from geovq.metrics import code_counts
    from geovq.plots import save_code_usage, save_image_rows, save_rate_distortion

    split = metrics["split"]
    figures = {}
    originals = to_float(data.images[split][:IMAGES_SHOWN])
    rows = [("original", originals)]
    for files in _recorded_vaes(record):
        vae, _ = load_vae(record, device, files)
        latents, _ = load_latents(record, files)
        with torch.no_grad():
            rows.append(
                (
                    files.vae.removesuffix(".safetensors"),
                    torch.sigmoid(
                        vae.decode(latents[f"{split}.mu"][:IMAGES_SHOWN].to(device))
                    ).cpu(),
                )
            )
    for source in sources:
        rows.append((source.label, source.decode(source.codes[split][:IMAGES_SHOWN])))
    figures["reconstructions"] = _figure(
        record,
        f"{REPORT}/reconstructions.png",
        lambda path: save_image_rows(rows, path, max_images=IMAGES_SHOWN),
    )
    usage = {
        s.label: code_counts(s.codes[split], s.k, per_position=s.per_position) for s in sources
    }
    figures["code_usage"] = _figure(
        record, f"{REPORT}/code_usage.png", lambda path: save_code_usage(usage, path)
    )
    if metrics["rate_distortion"]:
        figures["rate_distortion"] = _figure(
            record,
            f"{REPORT}/rate_distortion.png",
            lambda path: save_rate_distortion(metrics["rate_distortion"], path),
        )
    generator = torch.Generator(device=device).manual_seed(0)
    for source in sources:
        grid_rows = []
        prior = _prior_samples(record, source, 16, generator, device)
        if prior is not None:
            grid_rows.append(("prior", prior[0]))
        random_codes = torch.randint(
            source.k, (16, *source.grid), generator=generator, device=device
        )
        grid_rows.append(("random codes", source.decode(random_codes)))
        figures[f"samples {source.label}"] = _figure(
            record,
            f"{REPORT}/samples-{source.slug}.png",
            lambda path, rows=grid_rows: save_image_rows(rows, path, max_images=16),
        )
    return figures


def _figure(record: StageRun, relpath: str, save) -> str:  # noqa: ANN001 - save(path)
    """Render a figure into the stage's staging folder; it lands with the report."""
    save(record.staged_path(relpath))
    record.adopt(relpath)
    return relpath


HEADLINE_COLUMNS = [
    "quantization",
    "bits/img",
    "mse/pixel",
    "psnr",
    "ssim",
    "util",
    "dead",
    "perplexity",
    "prior bits/code",
    "unigram",
    "FD prior",
    "FD random",
]


def headline_rows(metrics: dict[str, Any]) -> list[list[str]]:
    split = metrics["split"]
    quality = metrics["sample_quality"].get("sources", {})
    rows = []
    for name, ref in metrics["vae_reference"].items():
        figures = ref["splits"].get(split, {})
        fd = quality.get(name, {}).get("prior_frechet")
        rows.append(
            [
                f"{name} (continuous)",
                "-",
                _f(figures.get("mse_per_pixel"), 5),
                _f(figures.get("psnr"), 2),
                _f(figures.get("ssim"), 3),
                "-",
                "-",
                "-",
                "-",
                "-",
                _f(fd, 1),
                "-",
            ]
        )
    for name, entry in metrics["sources"].items():
        figures = entry["splits"][split]
        prior = entry.get("prior") or {}
        prior_bits = prior.get("splits", {}).get(split, {}).get("bits_per_code")
        sq = quality.get(name, {})
        rows.append(
            [
                name,
                f"{entry['bits_per_image']:.0f}",
                _f(figures.get("mse_per_pixel"), 5),
                _f(figures.get("psnr"), 2),
                _f(figures.get("ssim"), 3),
                f"{figures['utilisation']:.0%}",
                str(figures["dead_codes"]),
                _f(figures["perplexity"], 1),
                _f(prior_bits, 3),
                _f(prior.get("unigram_bits_per_code"), 3),
                _f(sq.get("prior_frechet"), 1),
                _f(sq.get("random_frechet"), 1),
            ]
        )
    return rows


def _pair_notes(pairs: list[dict]) -> list[str]:
    return [
        f"{p['posthoc']} vs {p['vqvae']} at {p['bits_per_image']:.0f} bits/image: "
        f"MSE ratio {p['mse_ratio']:.3f} "
        f"({'post hoc better' if p['mse_ratio'] <= 1 else 'VQ-VAE better'})"
        for p in pairs
    ]


def render_report(metrics: dict[str, Any]) -> str:
    """The report as Markdown: readable on its own, figures linked beside it."""
    split = metrics["split"]
    lines = [f"# geovq compare — {split} split", ""]
    lines += ["| " + " | ".join(HEADLINE_COLUMNS) + " |", "|" + "---|" * len(HEADLINE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(metrics)]
    quality = metrics["sample_quality"]
    lines += ["", FD_NOTE.format(n=quality.get("samples", "-"))]
    if "classifier_test_accuracy" in quality:
        lines.append(
            f"Classifier test accuracy: {quality['classifier_test_accuracy']:.1%}; "
            f"FD of as many real train images (the floor): {quality['real_train_frechet']:.2f}."
        )
        for name, figures in quality["sources"].items():
            if "class_agreement" in figures:
                share = figures["class_agreement"]
                lines.append(f"- {name}: conditional samples classified as asked: {share:.1%}")
    lines += ["", "## Equal bit rate", ""]
    pairs = metrics["equal_rate_pairs"]
    if pairs:
        lines += [PAIR_HEADER, "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {p['posthoc']} | {p['vqvae']} | {p['bits_per_image']:.0f} | "
            f"{p['posthoc_mse']:.5f} | {p['vqvae_mse']:.5f} | {p['mse_ratio']:.3f} | "
            f"{p['posthoc_utilisation']:.0%} / {p['vqvae_utilisation']:.0%} |"
            for p in pairs
        ]
    else:
        lines.append(NO_PAIR_NOTE)
    lines += ["", "## Figures", ""]
    for label, path in sorted(metrics.get("figures", {}).items()):
        lines.append(f"![{label}]({path.removeprefix(REPORT + '/')})")
    return "\n".join(lines) + "\n"


FD_NOTE = (
    "FD: Fréchet distance between classifier features of {n} samples and of the real test "
    "images (lower is better); '-' where there is no prior."
)
PAIR_HEADER = (
    "| post hoc | VQ-VAE | bits/image | MSE post hoc | MSE VQ-VAE | ratio | "
    "utilisation post hoc / VQ-VAE |"
)
NO_PAIR_NOTE = (
    "No post-hoc quantization has a VQ-VAE at the same bits per image in this run; compare "
    "rows at different rates only with their bits/img column in view."
)


# -- helpers -----------------------------------------------------------------------------------
def _recorded_vaes(record: StageRun) -> list[VaeFiles]:
    return [
        files for files in recorded_vaes(record.manifest) if record.run_dir.exists(files.latents)
    ]


def _run_images(record: StageRun) -> RunImages:
    """The run's own dataset (from its first trained model) plus extra splits of any latents."""
    first = first_trained_record(record.manifest)
    if first is None:
        raise GeovqError(
            f"no trained model recorded in {record.run_dir.path}; run `geovq train-vae` first"
        )
    dataset = load_dataset(recorded_data(first, str(record.run_dir.manifest_path)))
    data = RunImages(
        {name: split.images for name, split in dataset.splits.items()},
        {name: split.labels for name, split in dataset.splits.items()},
    )
    for files in _recorded_vaes(record):
        _, meta = load_latents(record, files)
        for name, data_json in meta.extra_splits.items():
            extra = load_dataset(DataSettings(**data_json)).whole()
            data.images[name], data.labels[name] = extra.images, extra.labels
    return data


def _f(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
