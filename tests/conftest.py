"""Shared fixtures: small real things (a tiny trained VAE run) built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_settings


@pytest.fixture(autouse=True)
def _stable_environment(monkeypatch):
    """Pinned terminal width for Rich, and no GEOVQ_ settings leaking in from the shell."""
    monkeypatch.setenv("COLUMNS", "120")
    for name in list(os.environ):
        if name.startswith("GEOVQ_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory) -> Path:
    """A run with a 1-epoch VAE on 64 images per split and its latents."""
    from geovq.stages import extract, train_vae

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    settings = tiny_settings(run_dir)
    train_vae.run(settings)
    extract.run(settings)
    return run_dir


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> Path:
    """A private copy of the tiny run that a test may change."""
    target = tmp_path / "run"
    shutil.copytree(tiny_run_template, target)
    return target
