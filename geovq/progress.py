"""Progress reporting for long work, kept out of the library: stages take a ``Progress``.

``RichProgress`` draws bars on stderr (a TTY, also under ``--json``: stdout stays one
document); ``PlainProgress`` prints one line per finished task or epoch (no TTY);
``NullProgress`` is silent (``--quiet``, ``--json`` without a TTY, Python callers).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class NullProgress:
    """Silent reporter; the base class every reporter follows."""

    def start(self, description: str, total: int | None = None) -> None:
        """Begin a task of ``total`` steps (replaces any running task)."""

    def advance(self, steps: int = 1, **fields: Any) -> None:
        """Move the running task on; ``fields`` are shown beside the bar (loss, images/s)."""

    def finish(self) -> None:
        """End the running task."""

    def log(self, message: str) -> None:
        """A line worth keeping in the log (an epoch's summary, a warning)."""

    def stage(self, index: int, total: int, name: str) -> None:
        """Announce stage ``index`` of ``total`` in a multi-stage run."""

    def close(self) -> None:
        """Release the terminal."""


class PlainProgress(NullProgress):
    """One line per log message or finished task on stderr: for logs and pipes."""

    def __init__(self, stream=None) -> None:  # noqa: ANN001
        self.stream = stream or sys.stderr
        self._description = ""
        self._started = 0.0

    def start(self, description: str, total: int | None = None) -> None:
        self._description, self._started = description, time.perf_counter()

    def finish(self) -> None:
        if self._description:
            elapsed = time.perf_counter() - self._started
            print(f"{self._description}: done in {elapsed:.1f} s", file=self.stream, flush=True)
        self._description = ""

    def log(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def stage(self, index: int, total: int, name: str) -> None:
        print(f"[{index}/{total}] {name}", file=self.stream, flush=True)


# Width of a task's name on a bar: at 80 columns the bar, counts, elapsed and remaining time
# keep their room and the loss and images/s fields get what is left.
NAME_WIDTH = 26


class RichProgress(NullProgress):
    """Rich bars on stderr: an optional overall stage bar and the current task's bar."""

    def __init__(self, console=None) -> None:  # noqa: ANN001
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        def fixed(width: int) -> Column:
            return Column(min_width=width, no_wrap=True)

        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("[bold]{task.description}", table_column=fixed(NAME_WIDTH)),
            BarColumn(bar_width=12, table_column=fixed(12)),
            MofNCompleteColumn(table_column=fixed(9)),
            TimeElapsedColumn(table_column=fixed(7)),
            TimeRemainingColumn(table_column=fixed(7)),
            TextColumn(
                "{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")
            ),
            console=self.console,
            transient=False,
        )
        self._bars.start()
        self._task = None
        self._overall = None

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        self._task = self._bars.add_task(shorten(description), total=total, info="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if self._task is None:
            return
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        if info:
            self._bars.update(self._task, advance=steps, info=info)
        else:
            self._bars.update(self._task, advance=steps)

    def finish(self) -> None:
        if self._task is not None:
            self._bars.remove_task(self._task)
            self._task = None

    def log(self, message: str) -> None:
        self._bars.console.print(message, highlight=False, markup=False)

    def stage(self, index: int, total: int, name: str) -> None:
        if self._overall is None:
            self._overall = self._bars.add_task("study", total=total, info="")
        self._bars.update(self._overall, completed=index - 1, info=name)

    def close(self) -> None:
        self.finish()
        if self._overall is not None:
            self._bars.update(self._overall, completed=self._bars.tasks[0].total)
        self._bars.stop()


def shorten(text: str, width: int = NAME_WIDTH) -> str:
    """Fit a task name in ``width`` characters, cutting its middle: its start names the stage
    and its end the epoch (``train-prior …l epoch 12/15``)."""
    if len(text) <= width:
        return text
    head = text[: width // 2 - 1]
    return head + "…" + text[len(text) - (width - len(head) - 1) :]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def make_progress(quiet: bool, as_json: bool = False) -> NullProgress:
    """The reporter a CLI call should use: silent, plain lines, or Rich bars on a TTY.
    Under ``--json`` only the bars on a terminal: a pipe or log gets the document alone."""
    if quiet:
        return NullProgress()
    if sys.stderr.isatty():
        return RichProgress()
    return NullProgress() if as_json else PlainProgress()
