"""Progress on stderr: bars that keep their times at 80 columns, and who gets which reporter."""

from __future__ import annotations

import io
import re
import sys

from rich.console import Console

from geovq.progress import NullProgress, PlainProgress, RichProgress, make_progress, shorten


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_at_80_columns_keep_elapsed_and_remaining_visible():
    screen = io.StringIO()
    console = Console(file=screen, width=80, force_terminal=True, color_system=None)
    progress = RichProgress(console)
    progress.stage(19, 31, "train-prior/quant-geodesic-k256-spatial")
    progress.start("train-prior quant/geodesic-k256-spatial epoch 12/15", total=313)
    progress.advance(100, loss=123.456, images_per_s=5012.3)
    console.print(progress._bars.get_renderable())
    progress.close()
    lines = [line for line in screen.getvalue().splitlines() if "100/313" in line]
    assert lines, screen.getvalue()
    line = lines[-1]
    assert len(line.rstrip()) <= 80 and "epoch 12/15" in line
    # Elapsed and remaining in full (remaining is -:--:-- until a rate is known), no "…".
    assert re.search(r"\d:\d\d:\d\d [-\d]:[-\d]{2}:[-\d]{2}", line), line


def test_shorten_keeps_both_ends():
    assert shorten("train-vae epoch 3/20") == "train-vae epoch 3/20"
    short = shorten("train-prior quant/geodesic-k256-spatial epoch 12/15")
    assert len(short) == 26 and short.startswith("train-prior") and short.endswith("12/15")


def test_json_keeps_bars_on_a_terminal_and_is_silent_in_a_pipe(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert isinstance(make_progress(False, as_json=True), RichProgress)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert type(make_progress(False, as_json=True)) is NullProgress
    assert type(make_progress(False)) is PlainProgress
    assert type(make_progress(True)) is NullProgress
