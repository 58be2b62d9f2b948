"""benchmarks/gpu_check.py's parts at --tiny sizes on the CPU, in this process: the code the
one-shot GPU check runs must not fail for want of a test."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import gpu_check


def _args(part: str, out) -> argparse.Namespace:
    return argparse.Namespace(part=part, device="cpu", tiny=True, backend="gloo", out=out)


def test_every_part_writes_its_figures(tmp_path, monkeypatch):
    for part in ("kmeans", "geodesic", "train"):
        getattr(gpu_check, f"part_{part}")(_args(part, tmp_path))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29631")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    gpu_check.part_ddp(_args("ddp", tmp_path))
    (tmp_path / "status.tsv").write_text("kmeans\t0\t1.5\n")
    gpu_check.part_summary(_args("summary", tmp_path))

    summary = json.loads((tmp_path / "summary.json").read_text())
    figures = summary["figures"]
    assert summary["parts"] == {"kmeans": {"rc": 0, "wall_s": 1.5}}
    assert set(figures) == {"kmeans", "geodesic", "train", "ddp_gloo_1"}
    kmeans = figures["kmeans"]["results"]
    torch_run, numpy_run = kmeans["torch_cpu_2000"], kmeans["numpy_cpu_2000"]
    assert torch_run["inertia"] == pytest.approx(numpy_run["inertia"], rel=0.02)
    assert kmeans["torch_cpu_4000"] == kmeans["torch_cpu_4000_again"] | {
        "seconds": kmeans["torch_cpu_4000"]["seconds"]
    }
    geodesic = figures["geodesic"]["results"]
    assert geodesic["knn_graph_cpu_kdtree"]["edges_differing"] == 0
    assert figures["train"]["results"]["bs16_bf16"]["loss_finite"]
    assert figures["ddp_gloo_1"]["results"]["throughput"]["images_per_s"] > 0
