"""``geovq info``: what a run directory holds — stages done, key figures, artifacts, and
whether each stage's outputs are still current. Reads only."""

from __future__ import annotations

from typing import Any

from geovq import GeovqError
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.settings import Settings
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


def run(settings: Settings, progress: NullProgress | None = None) -> StageResult:
    run_dir = RunDir(settings.run_dir)
    stages = run_dir.manifest()["stages"] if run_dir.manifest_path.is_file() else {}
    if not stages:
        raise GeovqError(
            f"no stages recorded in {run_dir.path}; run `geovq train-vae` first "
            "(or check --run-dir)"
        )
    summary: dict[str, Any] = {"run_dir": str(run_dir.path), "stages": {}, "artifacts": {}}
    rows = []
    for key, record in stages.items():
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
    return StageResult(
        "info",
        summary,
        title=f"run {run_dir.path}",
        columns=["stage", "current", "seconds", "key figures"],
        rows=rows,
        notes=[f"{path}: {size / 1e6:.2f} MB" for path, size in summary["artifacts"].items()],
    )


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    found = {k: metrics[k] for k in HEADLINE_METRICS if isinstance(metrics.get(k), int | float)}
    split = metrics.get("splits", {})
    test = split.get("test") if isinstance(split, dict) else None
    if isinstance(test, dict):
        found.update({k: test[k] for k in HEADLINE_METRICS if isinstance(test.get(k), int | float)})
    return found
