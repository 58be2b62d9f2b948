"""benchmarks/train_throughput.py at tiny sizes, in this process: the figures it prints come
with their peer and ratio (its --ddp mode runs torchrun; tests/test_distributed.py covers that)."""

from __future__ import annotations

import argparse

from benchmarks import train_throughput


def test_in_process_mode_prints_each_figure_beside_its_peer(capsys):
    args = argparse.Namespace(
        dataset=["mnist5k"], limit=96, batch_size=16, batches=2, warmup=1, repeats=1
    )
    train_throughput.in_process(args)

    out = capsys.readouterr().out
    assert "bare PyTorch loop, mnist5k" in out
    assert "geovq train-vae,   mnist5k" in out
    assert "ratio geovq/bare on mnist5k" in out
