"""``geovq info``: what a run directory holds — stages in pipeline order with their key figures
and whether each one's outputs are still current, the dataset, the preset, the versions that
produced it, and where the report is. Reads only."""

from __future__ import annotations

from typing import Any, get_args

from geovq import GeovqError
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import Settings, StageFamily
from geovq.stages.record import StageResult, fmt

HEADLINE_METRICS = (
    "test_mse_per_pixel",
    "test_loss",
    "mse_per_pixel",
    "utilisation",
    "perplexity",
    "bits_per_image",
    "bits_per_code",
)
# Stage keys are FAMILY or FAMILY/NAME; ``run`` (the study's own record) comes last.
PIPELINE_ORDER = (*get_args(StageFamily), "run")


def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    run_dir = RunDir(settings.run_dir)
    manifest = run_dir.manifest() if run_dir.manifest_path.is_file() else {}
    stages = manifest.get("stages", {})
    if not stages:
        raise GeovqError(
            f"no stages recorded in {run_dir.path}; run `geovq train-vae` first "
            "(or check --run-dir)"
        )
    summary: dict[str, Any] = {
        "run_dir": str(run_dir.path),
        "dataset": _dataset(stages),
        "preset": stages.get("run", {}).get("settings", {}).get("study", {}).get("preset"),
        "versions": manifest.get("versions", {}),
        "report": _report(run_dir, stages),
        "stages": {},
        "artifacts": {},
    }
    rows = []
    for key in pipeline_order(stages):
        record = stages[key]
        current = run_dir.outputs_current(key)
        headline = _headline(record.get("metrics", {}))
        summary["stages"][key] = {
            "current": current,
            "finished": record.get("finished"),
            "wall_time_s": record.get("wall_time_s"),
            "metrics": headline,
            "outputs": sorted(record.get("outputs", {})),
        }
        shown = "  ".join(f"{k} {fmt(v, 4)}" for k, v in headline.items())
        rows.append([key, "yes" if current else "NO", f"{record.get('wall_time_s', 0):.1f}", shown])
        for relpath in record.get("outputs", {}):
            if run_dir.exists(relpath):
                summary["artifacts"][relpath] = run_dir.file(relpath).stat().st_size
    versions = ", ".join(f"{name} {value}" for name, value in summary["versions"].items())
    notes = [
        f"dataset: {summary['dataset'] or '-'}    preset: {summary['preset'] or '-'}",
        f"versions: {versions}",
        f"report: {summary['report'] or '- (run `geovq compare`)'}",
    ]
    notes += [f"{path}: {size / 1e6:.2f} MB" for path, size in summary["artifacts"].items()]
    return StageResult(
        "info",
        summary,
        title=f"run {run_dir.path}",
        columns=["stage", "current", "seconds", "key figures"],
        rows=rows,
        notes=notes,
    )


def pipeline_order(stages: dict[str, Any]) -> list[str]:
    """Stage keys by pipeline family (train-vae, extract, quantize, ...), then as recorded."""
    rank = {family: index for index, family in enumerate(PIPELINE_ORDER)}
    return sorted(stages, key=lambda key: rank.get(key.split("/")[0], len(rank)))


def _dataset(stages: dict[str, Any]) -> str | None:
    for record in stages.values():
        data = record.get("settings", {}).get("data")
        if isinstance(data, dict) and data.get("dataset"):
            limit = f" (first {data['limit']} per split)" if data.get("limit") else ""
            return f"{data['dataset']}{limit}"
    return None


def _report(run_dir: RunDir, stages: dict[str, Any]) -> str | None:
    outputs = stages.get("compare", {}).get("outputs", {})
    found = [path for path in outputs if path.endswith("report.md")] or (
        ["report/report.md"] if run_dir.exists("report/report.md") else []
    )
    return str(run_dir.file(found[0])) if found else None


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    found = {k: metrics[k] for k in HEADLINE_METRICS if isinstance(metrics.get(k), int | float)}
    split = metrics.get("splits", {})
    test = split.get("test") if isinstance(split, dict) else None
    if isinstance(test, dict):
        found.update({k: test[k] for k in HEADLINE_METRICS if isinstance(test.get(k), int | float)})
    return found
