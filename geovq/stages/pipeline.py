"""``geovq run``: the whole study in one command, skipping every stage that is current.

train-vae (flat, and spatial; each rate-matched to its codes; a wider spatial one for the
transform code) -> extract -> quantize (each metric; geodesic with medoid and barycenter
codewords; scalar; transform) -> refit-decoder -> train-vqvae
(VQ and FSQ, 2x4 bit-rate matched and the trunk's grid: 7x7 for 28x28 images, as many epochs as
VAE + refit) -> train-prior (each source) -> sample -> compare.
A stage is skipped when the manifest shows its outputs unchanged, its inputs unchanged and its
settings equal to today's, and nothing it depends on ran in this call; ``--force STAGE`` redoes
a stage family and whatever depends on it. An interrupted run therefore continues where it
stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

from geovq import GeovqError
from geovq.artifacts import VaeFiles
from geovq.data import image_size
from geovq.evaluation.rates import pair_notes
from geovq.models.blocks import trunk_grid
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import Preset, Settings, StageFamily
from geovq.stages import (
    compare,
    extract,
    quantize,
    refit_decoder,
    sample,
    train_prior,
    train_vae,
    train_vqvae,
)
from geovq.stages.record import StageResult, StageRun, replacing
from geovq.stages.sources import slug

FAMILIES: tuple[str, ...] = get_args(StageFamily)

PRESETS: dict[str, dict[str, Any]] = {
    # A smoke run: tiny data and epochs, finishes in about a minute on 2 CPU cores.
    "quick": {
        "data": {"limit": 200},
        "vae": {"epochs": 1},
        "quantize": {"k": 32, "restarts": 1},
        "refit": {"epochs": 1},
        "vqvae": {"k": 32, "epochs": 1, "levels": [8, 4]},
        "prior": {"epochs": 1, "layers": 4, "hidden": 32},
        "compare": {"samples": 64, "sweep_k": "8,32", "classifier_epochs": 1},
        "study": {"spatial_metrics": ["w2", "scalar"]},
    },
    # Meaningful results on mnist5k: 47 min 28 s on 2 CPU cores (~400 training images/s,
    # 17 minutes of it beside the test suite), measured at commit d661c7a with 55 stages;
    # minutes on a GPU. The VQ-VAEs and FSQ train 12 + 5 = 17 epochs, the VAEs' plus the
    # refits'.
    "default": {
        "vae": {"epochs": 12},
        "prior": {"epochs": 5},
        "study": {"spatial_metrics": ["w2", "scalar", "transform"]},
        "compare": {"sweep_k": "16,64,256,1024", "samples": 300},
    },
    # All of Fashion-MNIST (60,000 train, 10,000 test images; 480,000 flat latent chunks and
    # 2.94 M spatial ones) on 2 CPU cores: one VAE epoch (so the VQ-VAEs train 1 + 1 = 2),
    # one refit and prior epoch, one k-means restart, 3 flat sources and spatial w2, no FSQ.
    # Measured at 4060d6f: 2 h 1 min on a 183 images/s machine, ~37 min of it sharing the
    # cores with the test suite (the 2-epoch form was on course for ~95 min at ~420 images/s).
    # With a GPU, use the `full` preset.
    "fashion": {
        "data": {"dataset": "fashion-mnist"},
        "vae": {"epochs": 1},
        "refit": {"epochs": 1},
        "prior": {"epochs": 1},
        "quantize": {"restarts": 1},
        "study": {
            "metrics": ["euclidean", "w2", "geodesic"],
            "geodesic_codewords": ["barycenter"],
            "spatial_metrics": ["w2"],
            "fsq": False,
        },
        "compare": {"sweep_k": "16,64,256", "samples": 300, "classifier_epochs": 1},
    },
    # For a GPU and the full datasets.
    "full": {
        "data": {"dataset": "mnist"},
        "vae": {"epochs": 30},
        "prior": {"epochs": 30, "layers": 8, "hidden": 128},
        "compare": {"samples": 5000, "sweep_k": "16,64,256,1024,4096"},
    },
}


assert tuple(PRESETS) == get_args(Preset), "settings.Preset names the presets"


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise GeovqError(f"--preset {name} is unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class Step:
    key: str  # manifest key of the stage record
    family: str  # for --force
    run: Callable[[Settings, NullProgress], StageResult]
    settings: Settings
    sections: tuple[str, ...] = ()  # settings sections the record must still match
    deps: list[str] = field(default_factory=list)


def plan(settings: Settings) -> list[Step]:
    """The study's stages in order, each with the settings it runs with."""
    steps: list[Step] = []
    study = settings.study
    # Stages run unforced: inputs stay verified; ``run`` lets them replace what they redo.
    base = settings

    def add(key, family, stage, step_settings, sections=(), deps=()):
        steps.append(Step(key, family, stage.run, step_settings, sections, list(deps)))

    sources: list[tuple[str, str]] = []  # (source name, producer key)
    trunk_h, trunk_w = trunk_grid(image_size(settings.data))
    latents = [(None, "flat", study.metrics, {"target_rate": study.flat_target_rate})]
    if study.spatial:
        spatial = {"target_rate": study.spatial_target_rate}
        spatial["spatial_channels"] = study.spatial_channels
        # each position a chunk of the code, each held at its share of the rate
        per_position = study.spatial_rate_per_position and study.spatial_target_rate
        spatial["rate_chunks"] = trunk_h * trunk_w if per_position else None
        metrics = study.spatial_metrics
        if "transform" in metrics and study.transform_channels != study.spatial_channels:
            # the transform code gets its own spatial VAE, same rate, more channels
            metrics = [metric for metric in metrics if metric != "transform"]
            wider = {**spatial, "spatial_channels": study.transform_channels}
            extra = [(f"spatial{study.transform_channels}", "spatial", ["transform"], wider)]
        else:
            extra = []
        latents += [("spatial", "spatial", metrics, spatial), *extra]
    for vae_name, layout, metrics, vae_options in latents:
        files = VaeFiles(vae_name)
        vae_settings = _with(base, vae={"name": vae_name, "latent": layout, **vae_options})
        add(files.train_key, "train-vae", train_vae, vae_settings, ("data", "vae"))
        add(files.extract_key, "extract", extract, vae_settings, (), [files.train_key])
        for options in _quantizations(metrics, study):
            q = _with(vae_settings, quantize=options)
            name = quantize.default_name(q.quantize, vae_name)
            add(
                quantize.stage_key(name),
                "quantize",
                quantize,
                q,
                ("quantize",),
                [files.extract_key],
            )
            producer = quantize.stage_key(name)
            if study.refit:
                refit = _with(q, refit={"source": f"quant/{name}"})
                add(
                    refit_decoder.stage_key(name),
                    "refit-decoder",
                    refit_decoder,
                    refit,
                    ("refit",),
                    [producer],
                )
                producer = refit_decoder.stage_key(name)
            sources.append((f"quant/{name}", producer))
    quantizers = ["vq", "fsq"] if study.fsq else ["vq"]
    for grid, quantizer in [(g, q) for g in study.vqvae_grids for q in quantizers]:
        grid = f"{trunk_h}x{trunk_w}" if grid == "trunk" else grid
        options = {"grid": grid, "name": None, "quantizer": quantizer}
        vq = _with(base, vqvae={**options, "epochs": end_to_end_epochs(settings)})
        name = train_vqvae.default_name(vq)
        add(train_vqvae.stage_key(name), "train-vqvae", train_vqvae, vq, ("data", "vqvae"))
        sources.append((f"vqvae/{name}", train_vqvae.stage_key(name)))
    if study.priors:
        for source, producer in sources:
            p = _with(base, prior={"source": source})
            add(
                train_prior.stage_key(source), "train-prior", train_prior, p, ("prior",), [producer]
            )
            s = _with(base, sample={"source": source, "mode": "prior", "out": None})
            key = f"sample/{slug(source)}/prior"
            add(key, "sample", sample, s, ("sample",), [train_prior.stage_key(source), producer])
    compare_key = compare.stage_key(settings.compare.split)
    add(compare_key, "compare", compare, base, ("compare",), [step.key for step in steps])
    return steps


def end_to_end_epochs(settings: Settings) -> int:
    """The VQ-VAE's epochs: with ``study.equal_epochs`` the post-hoc family's whole budget,
    VAE epochs + decoder-refit epochs, so neither family trains longer; else vqvae.epochs."""
    if not settings.study.equal_epochs:
        return settings.vqvae.epochs
    return settings.vae.epochs + (settings.refit.epochs if settings.study.refit else 0)


def _quantizations(metrics: list[str], study) -> list[dict[str, Any]]:
    """Quantize options of every post-hoc source of one VAE: each metric shared, each
    per-position metric, geodesic once per codeword kind."""
    variants = [(m, "shared") for m in metrics]
    variants += [(m, "per-position") for m in study.per_position_metrics]
    options = []
    for metric, codebook in variants:
        codewords = study.geodesic_codewords if metric == "geodesic" else ["medoid"]
        for codeword in codewords:
            options.append(
                {
                    "metric": metric,
                    "codebook": codebook,
                    "codeword": codeword,
                    "name": None,
                    "refit_decoder": False,
                }
            )
    return options


def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    progress = progress or NullProgress()
    run_dir = RunDir(settings.run_dir)
    unknown = [name for name in settings.study.redo if name not in FAMILIES]
    if unknown:
        raise GeovqError(f"--force {unknown[0]} is not a stage; choose from {', '.join(FAMILIES)}")
    steps = plan(settings)
    study_started = time.perf_counter()
    ran: set[str] = set()
    report: list[dict[str, Any]] = []
    for index, step in enumerate(steps, start=1):
        progress.stage(index, len(steps), step.key)
        if _skippable(run_dir, step, ran, settings.study.redo):
            report.append({"stage": step.key, "status": "current", "seconds": 0.0})
            continue
        started = time.perf_counter()
        with replacing():
            step.run(step.settings, progress)
        ran.add(step.key)
        seconds = round(time.perf_counter() - started, 1)
        report.append({"stage": step.key, "status": "ran", "seconds": seconds})
        progress.log(f"[{index}/{len(steps)}] {step.key}: {seconds:.1f} s")
    split = settings.compare.split
    compare_record = run_dir.stage(compare.stage_key(split)) or {}
    metrics = {
        "stages": report,
        "total_seconds": round(sum(item["seconds"] for item in report), 1),
        "equal_rate_pairs": compare_record.get("metrics", {}).get("equal_rate_pairs", []),
        "report": str(run_dir.file(f"{compare.report_dir(split)}/report.md")),
    }
    if ran:  # a run that found everything current changes nothing, the manifest included
        _record_study(run_dir, settings, report, study_started)
    rows = [[item["stage"], item["status"], f"{item['seconds']:.1f}"] for item in report]
    return StageResult(
        "run",
        metrics,
        title=f"geovq run ({metrics['total_seconds']:.0f} s)",
        columns=["stage", "status", "seconds"],
        rows=rows,
        notes=[f"report: {metrics['report']}"] + pair_notes(metrics["equal_rate_pairs"]),
    )


def _record_study(
    run_dir: RunDir, settings: Settings, report: list[dict[str, Any]], started_at: float
) -> None:
    """The study itself as manifest record ``run`` (its preset and plan, for ``geovq info``),
    committed after its stages, timed from the start of the study."""
    study = {"study": json.loads(settings.study.model_dump_json())}
    record = StageRun(run_dir, "run", study, settings.device, settings.seed, started_at=started_at)
    record.finish({"stages": report})


def quantize_then_refit(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    """``geovq quantize``, and with ``--refit-decoder`` the refit-decoder stage on its codes."""
    result = quantize.run(settings, progress)
    if not settings.quantize.refit_decoder:
        return result
    source = f"quant/{result.metrics['name']}"
    refit = refit_decoder.run(_with(settings, refit={"source": source}), progress)
    result.metrics["refit"] = {
        "mse_before": refit.metrics["mse_before"],
        "mse_after": refit.metrics["mse_after"],
    }
    result.outputs.update(refit.outputs)
    result.notes += [
        f"refit decoder, {split}: mse/pixel {before} -> {after}"
        for split, before, after, _ in refit.rows
    ]
    return result


def _skippable(run_dir: RunDir, step: Step, ran: set[str], redo: list[str]) -> bool:
    if step.family in redo or any(dep in ran for dep in step.deps):
        return False
    if not run_dir.outputs_current(step.key):
        return False
    recorded = run_dir.stage(step.key)["settings"]
    for section in step.sections:
        today = json.loads(getattr(step.settings, section).model_dump_json())
        if recorded.get(section) != today:
            return False
    return recorded.get("seed", step.settings.seed) == step.settings.seed


def _with(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of the settings with some fields of some sections replaced."""
    updates = {
        name: getattr(settings, name).model_copy(update=values) for name, values in sections.items()
    }
    return settings.model_copy(update=updates)
