"""geovq info: pipeline order, dataset, versions, report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy
import torch
import torchvision

from tests.helpers import cli

ROOT = Path(__file__).resolve().parents[2]


def test_info_lists_stages_in_pipeline_order_with_dataset_and_versions(tiny_run):
    quantized = cli("quantize", "--run-dir", tiny_run, "--k", "8", "--restarts", "1", "-q")
    assert quantized.exit_code == 0, quantized.stderr
    result = cli("info", "--run-dir", tiny_run, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)["metrics"]
    # The manifest keeps keys sorted (extract < quantize < train-vae); info shows the pipeline.
    assert list(info["stages"]) == ["train-vae", "extract", "quantize/w2-k8"]
    assert info["dataset"] == "mnist5k (first 64 per split)"
    versions = info["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["torchvision"] == torchvision.__version__
    assert versions["numpy"] == numpy.__version__
    assert versions["cuda"] == (torch.version.cuda or "none")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert versions["git_commit"].removesuffix("+dirty") == head.stdout.strip()
    assert info["report"] is None and info["preset"] is None
    table = cli("info", "--run-dir", tiny_run)
    assert "dataset: mnist5k" in table.stdout and "report: -" in table.stdout
