"""What every stage does around its work: time it, note the inputs it read and the outputs it
wrote (with sha256), and record itself in the manifest last."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from geovq.rundir import RunDir, StageRecord, now_iso

RESULT_SCHEMA_VERSION = 1


@dataclass
class StageResult:
    """A stage's answer: metrics for ``--json`` and a small table for the terminal."""

    stage: str
    metrics: dict[str, Any]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    title: str = ""
    columns: list[str] = field(default_factory=lambda: ["", "value"])
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": RESULT_SCHEMA_VERSION,
            "stage": self.stage,
            "metrics": self.metrics,
            "outputs": self.outputs,
            "notes": self.notes,
        }


def fmt(value: Any, digits: int = 5) -> str:
    """A table cell: floats to ``digits`` significant digits, anything else as text."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


class StageRun:
    """Collects one stage's record while it runs; ``finish`` writes the manifest entry."""

    def __init__(
        self, run_dir: RunDir, key: str, settings: dict[str, Any], device: torch.device, seed: int
    ) -> None:
        self.run_dir = run_dir
        self.key = key
        self.settings = settings
        self.device = device
        self.seed = seed
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.started = now_iso()
        self._t0 = time.perf_counter()

    def read(self, relpath: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Load an input artifact and remember its sha256 for the record."""
        tensors, metadata = self.run_dir.load_tensors(relpath, what)
        self.inputs[relpath] = self.run_dir.sha256(relpath)
        return tensors, metadata

    def write(
        self, relpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> None:
        self.outputs[relpath] = self.run_dir.save_tensors(relpath, tensors, metadata)

    def finish(self, metrics: dict[str, Any]) -> StageRecord:
        record = StageRecord(
            stage=self.key,
            settings=self.settings,
            inputs=self.inputs,
            outputs=self.outputs,
            metrics=metrics,
            wall_time_s=round(time.perf_counter() - self._t0, 3),
            device=str(self.device),
            seed=self.seed,
            started=self.started,
            finished=now_iso(),
        )
        self.run_dir.record(record)
        return record
