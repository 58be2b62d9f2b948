"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from geovq.cli import app
from geovq.settings import load_settings


def tiny_settings(run_dir: Path, **sections):
    """Settings for a seconds-long run: CPU, 64 images per split, 1 epoch."""
    overrides = {"run_dir": run_dir, "device": "cpu", "data": {"limit": 64}, "vae": {"epochs": 1}}
    for key, value in sections.items():
        if isinstance(value, dict):
            overrides.setdefault(key, {}).update(value)
        else:
            overrides[key] = value
    return load_settings(overrides)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file: to check a failed command changed nothing."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file (and a marker per folder): to check a failure left the run
    directory byte-identical."""
    import hashlib

    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        )
        for p in sorted(directory.rglob("*"))
    }


def cli(*args: str):
    """Run the real app in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
