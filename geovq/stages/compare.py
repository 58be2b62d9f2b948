"""``geovq compare``: the evidence, side by side, for every quantization in the run.

Load (every source, VAE and prior once) → evaluate (``geovq.evaluation``) → render
(``geovq.report``, ``geovq.plots``). Per source on ``--split``: reconstruction MSE/PSNR/SSIM,
two rates (nominal L log2 K bits per image, and the prior's NLL: the entropy-coded rate), code
usage, prior NLL beside uniform and unigram, the training budget (epochs and wall seconds, from
the manifest); sample quality through a small classifier trained on the run's train split
(cached in ``report/classifier.safetensors``); equal-rate pairs and rate–distortion points at
the ``--rate`` asked (both by default), with ``--sweep-k`` also a K sweep. A split the codes
lack (added by ``extract --as``) gets codes on the fly. Writes ``report/<split>/``:
metrics.json, report.md and the figures.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from geovq import GeovqError, memory
from geovq.artifacts import PriorFiles, Quantization, VaeFiles
from geovq.data import stratified_head, to_float
from geovq.evaluation import (
    RATES,
    FrechetScorer,
    code_baselines,
    decode_images,
    equal_rate_pairs,
    pair_notes,
    rate_points,
    reconstruction_figures,
    split_bits_per_code,
    sweep_points,
    training_budget,
    without_prior_rate,
)
from geovq.metrics import code_counts, summarize_codes
from geovq.models.classifier import ClassifierConfig, SmallClassifier, accuracy, train_classifier
from geovq.models.pixelcnn import sample_codes
from geovq.plots import save_code_usage, save_image_rows, save_rate_distortion, save_sample_rows
from geovq.progress import NullProgress
from geovq.quant.settings_fit import fit_from_settings
from geovq.quant.transform import check_budget
from geovq.report import (
    HEADLINE_COLUMNS,
    headline_rows,
    prior_rate_note,
    render_report,
    smoke_warning,
)
from geovq.rundir import RunDir
from geovq.settings import QuantizeSettings, Settings, parse_k_list
from geovq.stages.record import StageResult, StageRun, stage
from geovq.stages.sources import (
    RunImages,
    RunModels,
    Source,
    chunk_gaussians,
    has_refit_decoder,
    latents_vaes,
    list_sources,
    run_images,
)
from geovq.training import resolve_device

STAGE = "compare"
CLASSIFIER = "report/classifier.safetensors"
SAMPLES_CACHE = "report/samples.safetensors"  # sample quality and the samples shown
# rate -> the rate-distortion figure drawn at it
RATE_FIGURES = {"nominal": "rate_distortion", "prior": "rate_distortion_prior"}
HELD_OUT_SAMPLES_NOTE = (
    "not recomputed for a held-out split (samples do not depend on the split); see "
    "report/test/, or compare the test split with the same --samples first to have it here"
)
IMAGES_SHOWN = 10
SAMPLES_SHOWN = 16


def stage_key(split: str) -> str:
    return f"{STAGE}/{split}"


def report_dir(split: str) -> str:
    return f"report/{split}"


@stage
def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    device = resolve_device(settings.device)
    options = settings.compare
    split = options.split
    names = list_sources(run_dir)
    if not names:
        raise GeovqError(
            f"no quantization in {run_dir.path}; run `geovq quantize` (post hoc) or "
            "`geovq train-vqvae` (end to end) first"
        )
    record = StageRun(run_dir, stage_key(split), None, device, settings.seed, settings.force)
    record.settle({"compare": json.loads(options.model_dump_json()), "seed": settings.seed})
    models = RunModels(record, device)
    data = run_images(models)
    if split not in data.images:
        raise GeovqError(
            f"--split {split} is not in the run; choose one of {', '.join(data.images)}"
        )
    sources = _load_sources(models, names)
    missing = [
        s.label for s in sources if not s.add_split(split, data.images[split], data.labels[split])
    ]
    sources = [s for s in sources if split in s.codes]
    if not sources:
        raise GeovqError(f"no quantization has codes or latents for --split {split}")
    vaes = [files for files in latents_vaes(models) if f"{split}.mu" in models.latents(files)[0]]
    # every source's random and prior samples and every VAE's are held at once, then scored
    memory.require(
        memory.images_bytes(
            options.samples,
            tuple(data.images[split].shape[1:]),
            copies=2 * len(sources) + len(vaes) + 4,
        ),
        device,
        f"compare --samples {options.samples}",
        "use a smaller --samples",
    )

    progress.start("compare: reconstructions", total=len(sources) + len(vaes))
    entries, references = {}, {}
    priors: dict[str, dict | None] = {}  # a refit source and its VAE-decoder row share codes
    for source in sources:
        entries[source.label] = _source_entry(models, source, data, split, priors)
        progress.advance(1)
    for files in vaes:
        references[files.vae] = _vae_entry(models, files, data, split)
        progress.advance(1)
    progress.finish()

    quality, shown = _sample_quality_cached(run_dir, models, sources, vaes, data, settings)
    pairs = equal_rate_pairs(entries, split)
    sweep, skipped = (
        _sweep(models, entries, settings, data, progress) if options.sweep_k else ([], [])
    )
    rates = RATES if options.rate == "both" else (options.rate,)
    metrics: dict[str, Any] = {
        "split": split,
        "smoke_run": _smoke_reason(quality, data),
        "sources": entries,
        "vae_reference": references,
        "sample_quality": quality,
        "equal_rate_pairs": pairs,
        # rate -> points; the sweep's codebooks have no prior, so they have no prior rate
        "rate_distortion": {
            rate: rate_points(entries, split, rate) + (sweep if rate == "nominal" else [])
            for rate in rates
        },
        "prior_rate_left_out": without_prior_rate(entries, split) if "prior" in rates else [],
        "sweep_skipped": skipped,
    }
    folder = report_dir(split)
    figures = _figures(record, folder, models, sources, vaes, shown, data, metrics)
    metrics["figures"] = figures
    text = json.dumps(metrics, indent=2, sort_keys=True, default=_json_default) + "\n"
    record.write_bytes(f"{folder}/metrics.json", text.encode())
    record.write_bytes(f"{folder}/report.md", render_report(metrics).encode())
    _record_latents_per_split(record, models, split)
    record.finish({"split": split, "sources": list(entries), "equal_rate_pairs": pairs})
    _remove_stale_figures(run_dir, folder, figures)
    notes = [f"report: {run_dir.file(folder + '/report.md')}"]
    if metrics["smoke_run"]:
        notes.insert(0, smoke_warning(metrics["smoke_run"]))
    notes += pair_notes(pairs) + skipped
    if metrics["prior_rate_left_out"]:
        drawn = bool(metrics["rate_distortion"]["prior"])
        notes.append(prior_rate_note(metrics["prior_rate_left_out"], drawn))
    notes += [f"{name} has no latents or images for the {split} split" for name in missing]
    return StageResult(
        stage_key(split),
        metrics,
        record.outputs,
        title=f"compare ({split} split)",
        columns=HEADLINE_COLUMNS,
        rows=headline_rows(metrics),
        notes=notes,
    )


# -- load --------------------------------------------------------------------------------------
def _load_sources(models: RunModels, names: list[str]) -> list[Source]:
    """Every source; a post-hoc one with a refit decoder also as it decodes without the refit."""
    sources = []
    for name in names:
        source = models.source(name)
        sources.append(source)
        if source.kind == "posthoc" and has_refit_decoder(models.run_dir, name):
            plain = models.source(name, use_refit=False)
            plain.variant = "vae decoder"
            sources.append(plain)
    return sources


def _classifier(
    run_dir: RunDir, data: RunImages, settings: Settings, device
) -> tuple[SmallClassifier, float]:
    """Train once on the run's train split; cached in report/classifier.safetensors."""
    channels, height, width = data.images["train"].shape[1:]
    num_classes = int(data.labels["train"].max()) + 1
    config = ClassifierConfig(channels, height, width, num_classes)
    key = {
        "config": config.to_json(),
        "epochs": str(settings.compare.classifier_epochs),
        "seed": str(settings.seed),
        "train_images": str(data.images["train"].shape[0]),
    }
    if run_dir.exists(CLASSIFIER):
        tensors, meta = run_dir.load_tensors(CLASSIFIER, "classifier")
        if all(meta.get(k) == v for k, v in key.items()):
            model = SmallClassifier(config)
            model.load_state_dict(tensors)
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
    run_dir.save_tensors(CLASSIFIER, model.state_dict(), {**key, "test_accuracy": str(test_acc)})
    return model.eval(), test_acc


# -- evaluate ----------------------------------------------------------------------------------
def _source_entry(
    models: RunModels, source: Source, data: RunImages, split: str, priors: dict
) -> dict:
    """A source's figures on the split; ``priors`` caches prior figures by source name (its
    decoder does not change its codes, so neither the prior's NLL nor the baselines)."""
    codes = source.codes[split]
    if source.name not in priors:
        priors[source.name] = _prior_figures(models, source, split)
    figures = summarize_codes(codes, source.k, per_position=source.per_position)
    figures.update(reconstruction_figures(source.decode(codes), data.images[split]))
    return {
        "kind": source.kind,
        "k": source.k,
        "grid": list(source.grid),
        "per_position": source.per_position,
        "bits_per_image": source.bits_per_image,
        "decoder": source.decoder,
        "metric": source.metadata.metric or "vq-vae",
        "codeword": _codeword(models, source),
        "vae": source.metadata.vae or "",
        "codes_on_the_fly": split in source.on_the_fly,
        "splits": {split: figures},
        "prior": priors[source.name],
        "budget": _budget(models, source.training_stages),
    }


def _codeword(models: RunModels, source: Source) -> str | None:
    """A geodesic quantization's codewords ("medoid" or "barycenter"), from its record."""
    if source.metadata.metric != "geodesic":
        return None
    record = models.reader.record_of(Quantization.parse(source.name).key) or {}
    return record.get("settings", {}).get("quantize", {}).get("codeword", "medoid")


def _budget(models: RunModels, stages: list[str]) -> dict[str, Any] | None:
    """Epochs and wall seconds of these stages, summed from their manifest records."""
    return training_budget({key: models.reader.record_of(key) for key in stages})


def _prior_figures(models: RunModels, source: Source, split: str) -> dict[str, Any] | None:
    prior = models.prior(source)
    if prior is None:
        return None
    figures: dict[str, Any] = {"conditional": prior.config.num_classes > 0, "splits": {}}
    labels = source.labels.get(split) if prior.config.num_classes else None
    if labels is None or int(labels.min()) >= 0:
        device = models.device
        bits = split_bits_per_code(
            prior, source.codes[split].to(device), None if labels is None else labels.to(device)
        )
        figures["splits"][split] = {
            "bits_per_code": bits,
            "bits_per_image": bits * source.positions,
        }
    figures.update(
        code_baselines(source.codes["train"], source.codes[split], source.k, source.per_position)
    )
    return figures


def _vae_entry(models: RunModels, files: VaeFiles, data: RunImages, split: str) -> dict:
    vae, _ = models.vae(files)
    latents, _ = models.latents(files)
    recons = decode_images(vae.decode, latents[f"{split}.mu"], models.device)
    return {
        "latent_dim": vae.config.total_latent_dim,
        "latent": vae.config.latent,
        "splits": {split: reconstruction_figures(recons, data.images[split])},
        "budget": _budget(models, [files.train_key]),
    }


def _sample_quality_cached(
    run_dir: RunDir,
    models: RunModels,
    sources: list[Source],
    vaes: list[VaeFiles],
    data: RunImages,
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Sample quality and the samples shown in the figures, from the cache when nothing they
    depend on changed. They do not depend on --split, so a held-out compare reuses them."""
    key = _samples_key(run_dir, sources, vaes, settings)
    if run_dir.exists(SAMPLES_CACHE):
        tensors, meta = run_dir.load_tensors(SAMPLES_CACHE, "cached samples")
        if meta.get("key") == key:
            shown: dict[str, dict[str, torch.Tensor]] = {}
            for name, images in tensors.items():
                label, kind = name.rsplit("|", 1)
                shown.setdefault(label, {})[kind] = images
            return json.loads(meta["quality"]), shown
    if settings.compare.split in data.extras:
        # A held-out split asks how the codes do on new data; sampling every prior again for
        # figures that do not depend on the split would cost most of the time.
        return {"skipped": HELD_OUT_SAMPLES_NOTE}, {}
    n = settings.compare.samples
    samples = _samples(models, sources, vaes, n, settings.seed, models.device)
    quality = _sample_quality(run_dir, samples, data, settings, models.device)
    shown = {
        label: {kind: entry[kind][:SAMPLES_SHOWN] for kind in ("prior", "random") if kind in entry}
        for label, entry in samples.items()
    }
    tensors = {
        f"{label}|{kind}": images for label, e in shown.items() for kind, images in e.items()
    }
    run_dir.save_tensors(SAMPLES_CACHE, tensors, {"key": key, "quality": json.dumps(quality)})
    return quality, shown


def _samples_key(
    run_dir: RunDir, sources: list[Source], vaes: list[VaeFiles], settings: Settings
) -> str:
    """What the samples and their scores depend on: every decoder, codes and prior file (by
    sha256), the number of samples, the seed and the classifier's training."""
    files = set()
    for source in sources:
        quant = Quantization.parse(source.name)
        files |= {quant.codes, source.decoder, PriorFiles(quant).path}
    files |= {vae.vae for vae in vaes}
    digests = {path: run_dir.sha256(path) for path in sorted(files) if run_dir.exists(path)}
    labels = [source.label for source in sources] + [vae.vae for vae in vaes]
    options = settings.compare
    parts = [digests, labels, options.samples, options.classifier_epochs, settings.seed]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _samples(
    models: RunModels, sources: list[Source], vaes: list[VaeFiles], n: int, seed: int, device
) -> dict[str, dict[str, Any]]:
    """Per source: n images from uniform random codes and, with a prior, n prior samples (with
    the classes asked of a conditional prior); per VAE: n decodings of z ~ N(0, I). A variant
    (same codes, another decoder) decodes the same codes as its source."""
    generator = torch.Generator(device=device).manual_seed(seed + 11)
    samples: dict[str, dict[str, Any]] = {}
    codes_of: dict[str, dict[str, Any]] = {}  # source name -> the codes drawn for it
    for source in sources:
        if source.name not in codes_of:
            drawn: dict[str, Any] = {
                "random": torch.randint(
                    source.k, (n, *source.grid), generator=generator, device=device
                )
            }
            prior = models.prior(source)
            if prior is not None:
                classes = prior.config.num_classes
                labels = (torch.arange(n, device=device) % classes) if classes else None
                drawn["prior"] = sample_codes(prior, n, labels=labels, generator=generator)
                drawn["labels"] = labels
            codes_of[source.name] = drawn
        drawn = codes_of[source.name]
        entry: dict[str, Any] = {"random": source.decode(drawn["random"])}
        if "prior" in drawn:
            entry["prior"], entry["labels"] = source.decode(drawn["prior"]), drawn["labels"]
        samples[source.label] = entry
    for files in vaes:
        vae, _ = models.vae(files)
        z = torch.randn(n, vae.config.total_latent_dim, generator=generator, device=device)
        samples[files.vae] = {"prior": decode_images(vae.decode, z, device)}
    return samples


def _sample_quality(
    run_dir: RunDir, samples: dict, data: RunImages, settings: Settings, device
) -> dict[str, Any]:
    if "train" not in data.labels or int(data.labels["train"].min()) < 0:
        return {"skipped": "the run's data has no class labels"}
    classifier, classifier_acc = _classifier(run_dir, data, settings, device)
    scorer = FrechetScorer(classifier, to_float(data.images["test"]))
    results: dict[str, Any] = {
        "classifier_test_accuracy": classifier_acc,
        "samples": settings.compare.samples,
        "sources": {},
    }
    for label, entry in samples.items():
        figures: dict[str, Any] = {}
        if "random" in entry:
            figures["random_frechet"] = scorer.score(entry["random"])
        if "prior" in entry:
            figures["prior_frechet"] = scorer.score(entry["prior"])
        if entry.get("labels") is not None:
            figures["class_agreement"] = accuracy(
                classifier, entry["prior"].to(device), entry["labels"]
            )
        results["sources"][label] = figures
    # The floor: as many real train images as samples, balanced over classes (the split
    # itself may be sorted by class).
    n = min(settings.compare.samples, len(data.labels["train"]))
    real_train = to_float(data.images["train"][stratified_head(data.labels["train"], n)])
    results["real_train_frechet"] = scorer.score(real_train)
    return results


def _transform_refusal(mu: torch.Tensor, k: int) -> str | None:
    """Why a transform code of chunks mu (N, L, C) cannot have K codes, or None."""
    try:
        check_budget(mu.shape[1] * mu.shape[2], mu.shape[1], k)
    except ValueError as error:
        return str(error)
    return None


def _sweep(
    models: RunModels, entries: dict, settings: Settings, data: RunImages, progress
) -> tuple[list[dict], list[str]]:
    """Quantize again at each K of --sweep-k for every post-hoc family in the run, with the
    fit quantize uses (one restart: the sweep maps the curve; the run's codebooks are the
    carefully fitted points). Returns the points and a line for each K skipped, and why."""
    split = settings.compare.split
    families: dict[tuple, QuantizeSettings] = {}
    for name, entry in entries.items():
        if entry["kind"] != "posthoc":
            continue
        recorded = models.run_dir.stage(f"quantize/{name.split(' ')[0].removeprefix('quant/')}")
        if not recorded:
            continue
        q = QuantizeSettings.model_validate(recorded["settings"]["quantize"])
        if q.metric == "scalar":  # sized by its levels, not K: a point, not a curve
            continue
        chunks = recorded["metrics"]["chunks"]
        codeword = q.codeword if q.metric == "geodesic" else "mean"
        families.setdefault((entry["vae"], q.metric, codeword, q.codebook, chunks), q)
    ks = parse_k_list(settings.compare.sweep_k)
    points: list[dict] = []
    skipped: list[str] = []
    progress.start("compare: rate-distortion sweep", total=len(families) * len(ks))
    for (vae_name, metric, codeword, codebook, chunks), q in families.items():
        files = VaeFiles(vae_name or None)
        latents, _ = models.latents(files)
        vae, _ = models.vae(files)
        fit_mu, fit_sigma = chunk_gaussians(latents, q.fit_split, chunks)
        mu, sigma = (
            (None, None) if split == q.fit_split else chunk_gaussians(latents, split, chunks)
        )
        per_position = codebook == "per-position"
        label = "geodesic-bary" if codeword == "barycenter" else metric
        family = f"post-hoc {label}{' per-position' if per_position else ''} ({vae_name or 'flat'})"
        fit_points = fit_mu.shape[0] * (1 if per_position else chunks)
        usable = [k for k in ks if k <= fit_points]
        skipped += [
            f"sweep skipped K={k} for {family}: its fit split has only {fit_points} points"
            for k in ks
            if k > fit_points
        ]
        if metric == "transform":  # K sets its bits: L log2 K must fit the latent's axes
            refused = {k: _transform_refusal(fit_mu, k) for k in usable}
            usable = [k for k in usable if refused[k] is None]
            skipped += [
                f"sweep skipped K={k} for {family}: {why}" for k, why in refused.items() if why
            ]
        progress.advance(len(ks) - len(usable))

        def fit_at(k: int, q=q, fit_mu=fit_mu, fit_sigma=fit_sigma):
            options = q.model_copy(update={"k": k, "restarts": 1})
            return fit_from_settings(options, fit_mu, fit_sigma, settings.seed)

        points += sweep_points(
            fit_at,
            usable,
            vae.decode,
            data.images[split],
            models.device,
            mu=mu,
            sigma=sigma,
            assign=q.assign,
            family=family,
            label=label,
            vae=vae_name,
            on_point=lambda: progress.advance(1),
        )
    progress.finish()
    return points, skipped


def _smoke_reason(quality: dict[str, Any], data: RunImages) -> str:
    """Why this run's figures cannot be trusted, or "" (a smoke run: tiny data, barely
    trained models; the quick preset makes one)."""
    reasons = []
    if data.images["train"].shape[0] < 1000:
        reasons.append(f"only {data.images['train'].shape[0]} training images")
    accuracy_ = quality.get("classifier_test_accuracy")
    if accuracy_ is not None and accuracy_ < 0.9:
        reasons.append(f"a {accuracy_:.0%}-accurate classifier judges the samples")
    return "; ".join(reasons)


# -- render ------------------------------------------------------------------------------------
def _figures(
    record: StageRun,
    folder: str,
    models: RunModels,
    sources: list[Source],
    vaes: list[VaeFiles],
    samples_shown: dict[str, dict[str, torch.Tensor]],
    data: RunImages,
    metrics: dict,
) -> dict[str, str]:
    split = metrics["split"]
    figures = {}
    labels = data.labels[split]
    n = min(IMAGES_SHOWN, len(labels))
    picked = stratified_head(labels, n) if int(labels.min()) >= 0 else torch.arange(n)
    rows = [("original", to_float(data.images[split][picked]))]
    for files in vaes:
        vae, _ = models.vae(files)
        latents, _ = models.latents(files)
        mu = latents[f"{split}.mu"][picked]
        label = f"{files.vae.removesuffix('.safetensors')} (continuous μ)"
        rows.append((label, decode_images(vae.decode, mu, models.device)))
    rows += [(source.label, source.decode(source.codes[split][picked])) for source in sources]
    figures["reconstructions"] = _save(
        record, f"{folder}/reconstructions.png", lambda path: save_image_rows(rows, path)
    )
    # a variant (the same codes through another decoder) would draw the same curve again
    usage = {
        s.label: code_counts(s.codes[split], s.k, per_position=s.per_position)
        for s in sources
        if not s.variant
    }
    figures["code_usage"] = _save(
        record, f"{folder}/code_usage.png", lambda path: save_code_usage(usage, path)
    )
    for rate, points in metrics["rate_distortion"].items():
        if not points:  # e.g. the prior rate of a run without priors (said in the notes)
            continue
        name = RATE_FIGURES[rate]
        figures[name] = _save(
            record,
            f"{folder}/{name}.png",
            lambda path, points=points, rate=rate: save_rate_distortion(points, path, rate=rate),
        )
    for source in sources:
        if source.label not in samples_shown:
            continue
        entry = samples_shown[source.label]
        grid_rows = [("prior", entry["prior"])] if "prior" in entry else []
        grid_rows.append(("random codes", entry["random"]))
        figures[f"samples {source.label}"] = _save(
            record,
            f"{folder}/samples-{source.slug}.png",
            lambda path, rows=grid_rows, title=source.label: save_sample_rows(
                rows, path, title=title
            ),
        )
    return figures


def _save(record: StageRun, relpath: str, save) -> str:
    """A figure written into the stage's staging folder, committed with its record."""
    save(record.staged_path(relpath))
    record.adopt(relpath)
    return relpath


def _record_latents_per_split(record: StageRun, models: RunModels, split: str) -> None:
    """compare reads the evaluated split (and, to assign codes on the fly, the fit split) of
    each latents file: record those splits, so another split added later leaves it current."""
    for files in latents_vaes(models):
        if files.latents not in record.inputs:
            continue
        latents, _ = models.latents(files)
        splits = [name for name in sorted({split, "train"}) if f"{name}.mu" in latents]
        record.narrow_to_splits(files.latents, latents, splits)


def _remove_stale_figures(run_dir: RunDir, folder: str, figures: dict[str, str]) -> None:
    """PNGs an earlier compare of this split left (e.g. of a source since removed)."""
    current = set(figures.values())
    for path in run_dir.file(folder).glob("*.png"):
        if str(path.relative_to(run_dir.path)) not in current:
            path.unlink()


def _json_default(value):
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)
