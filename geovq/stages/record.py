"""What every stage does around its work: claim its outputs, read its inputs verified, stage
its outputs privately and commit them with its record, all or nothing.

A stage's life: ``StageRun(...)`` (lock, validate the manifest, claim the key) ->
``settle(settings)`` (the overwrite rule) -> reads and work -> ``write`` -> ``finish``
(commit). ``@stage`` around a stage's ``run`` drops the staged outputs of a stage that fails,
and turns "already current" into a result.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import torch

from geovq import GeovqError
from geovq.artifacts import Reader
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


class Current(Exception):
    """Raised by ``StageRun.settle`` when the recorded outputs already are what would be made."""

    def __init__(self, key: str, record: dict[str, Any]) -> None:
        super().__init__(key)
        self.key = key
        self.record = record


_open_runs: contextvars.ContextVar[list[StageRun] | None] = contextvars.ContextVar(
    "geovq_open_runs", default=None
)
_replacing: contextvars.ContextVar[bool] = contextvars.ContextVar("geovq_replacing", default=False)


@contextlib.contextmanager
def replacing() -> Iterator[None]:
    """Let stages replace outputs without --force (``geovq run`` redoing a stage it found not
    current), while their inputs are still verified."""
    token = _replacing.set(True)
    try:
        yield
    finally:
        _replacing.reset(token)


def stage(run: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """Wrap a stage's ``run``: staged outputs of a failed stage are dropped (the run directory
    keeps its previous state) and a stage found current answers without redoing anything."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> StageResult:
        runs: list[StageRun] = []
        token = _open_runs.set(runs)
        try:
            result = run(*args, **kwargs)
        except Current as current:
            return current_result(current)
        finally:
            _open_runs.reset(token)
            for opened in runs:
                opened.close()
        for opened in runs:
            result.notes[:0] = opened.transaction.notes
        return result

    return wrapper


def current_result(current: Current) -> StageResult:
    metrics = current.record.get("metrics", {})
    return StageResult(
        current.key,
        {**metrics, "current": True},
        current.record.get("outputs", {}),
        title=f"{current.key} (current)",
        rows=[["status", "current: same settings and inputs; nothing to do"]],
        notes=[f"{current.key} is current (same settings and inputs); pass --force to redo it"],
    )


class StageRun(Reader):
    """Collects one stage's record while it runs; ``finish`` commits outputs and record."""

    def __init__(
        self,
        run_dir: RunDir,
        key: str,
        settings: dict[str, Any] | None,
        device: torch.device,
        seed: int,
        force: bool = False,
        started_at: float | None = None,
    ) -> None:
        """``started_at``: the ``time.perf_counter()`` when the work began, if before now."""
        self.transaction = run_dir.begin(key)  # validates the manifest before any work
        super().__init__(run_dir, force)
        self.key = key
        self.settings = settings or {}
        self.device = device
        self.seed = seed
        self._t0 = time.perf_counter() if started_at is None else started_at
        began = datetime.now(UTC) - timedelta(seconds=time.perf_counter() - self._t0)
        self.started = began.isoformat(timespec="seconds")
        runs = _open_runs.get()
        if runs is not None:
            runs.append(self)

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return self.transaction.outputs

    @property
    def notes(self) -> list[str]:
        return self.transaction.notes

    def settle(self, settings: dict[str, Any], resume: bool = False) -> None:
        """The overwrite rule, the same for every stage: an existing output is replaced only
        with --force (or --resume, which continues the same model); an identical rerun (same
        settings, outputs and inputs unchanged) is a no-op that says it is current."""
        self.settings = json.loads(json.dumps(settings, default=str))
        recorded = self.record_of(self.key)
        if recorded is None or self.force or resume or _replacing.get():
            return
        if recorded.get("settings") == self.settings and self.run_dir.outputs_current(
            self.key, self.manifest
        ):
            raise Current(self.key, recorded)
        self._refuse_changed_inputs(recorded)
        outputs = ", ".join(sorted(recorded.get("outputs", {}))) or self.key
        named = self.key.startswith(("quantize/", "train-vqvae/"))
        raise GeovqError(
            f"{outputs} already exist in {self.run_dir.path} (stage {self.key}, other settings "
            "or inputs); pass --force to replace them" + (", or another --name" if named else "")
        )

    def _refuse_changed_inputs(self, recorded: dict[str, Any]) -> None:
        """An input that no longer matches what its producer recorded is the first thing to say
        (it is why the outputs are not current, and --force would hide it)."""
        producers = {
            relpath: key
            for key, record in self.manifest["stages"].items()
            for relpath in record.get("outputs", {})
        }
        for relpath in recorded.get("inputs", {}):
            producer = producers.get(relpath)
            if producer is not None and self.run_dir.exists(relpath):
                self.read_bytes(relpath, producer, relpath)  # raises on a sha256 mismatch

    def write(
        self, relpath: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
    ) -> None:
        self.transaction.save_tensors(relpath, tensors, metadata)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        self.transaction.write_bytes(relpath, data)

    def staged_path(self, relpath: str):  # noqa: ANN201 - a Path
        """Where a writer that takes a path (a figure) puts output ``relpath``; then ``adopt``."""
        return self.transaction.staged(relpath)

    def adopt(self, relpath: str) -> None:
        self.transaction.adopt(relpath)

    def finish(self, metrics: dict[str, Any]) -> StageRecord:
        """Commit: staged outputs move into place together with this record."""
        record = StageRecord(
            stage=self.key,
            settings=self.settings,
            inputs=dict(self.inputs),
            metrics=metrics,
            wall_time_s=round(time.perf_counter() - self._t0, 3),
            device=str(self.device),
            seed=self.seed,
            started=self.started,
            finished=now_iso(),
        )
        self.transaction.commit(record)
        return record

    def close(self) -> None:
        self.transaction.close()


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Refuse NaN or infinite values in an input (one line naming it and the fix)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise GeovqError(f"{what} holds {bad} non-finite values (NaN or inf); {fix}")
