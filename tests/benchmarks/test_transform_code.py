"""benchmarks/transform_code.py on the tiny run: each code's figure comes with its ratio to the
k-means peer, and the figures are those of codes that decode (not the continuous latents)."""

from __future__ import annotations

import re

from benchmarks import transform_code


def test_prints_each_code_beside_the_k_means_peer(tiny_run, capsys):
    transform_code.main(["--run-dir", str(tiny_run), "--k", "16"])
    out = capsys.readouterr().out
    assert "8 chunks, 32 bits per image" in out
    mse = {
        label.strip(): (float(value), float(ratio))
        for label, value, ratio in re.findall(
            r"^(.+?): MSE ([0-9.]+)  ratio to the peer ([0-9.]+)", out, re.M
        )
    }
    assert set(mse) == {
        "euclidean k-means (the peer)",
        "greedy bits, no rotation",
        "transform code",
    }
    peer = mse["euclidean k-means (the peer)"][0]
    assert mse["euclidean k-means (the peer)"][1] == 1.0
    for value, ratio in mse.values():
        assert value > 0 and abs(ratio - value / peer) < 2e-3
