"""Sizes that cannot fit are one line naming the flag, before anything is allocated."""

import pytest

from geovq import GeovqError
from geovq.memory import available_bytes, require
from tests.helpers import cli, tree_digest

HUGE = [
    ("train-vae", "--latent-dim", "1000000000", "--force", "--limit", "8"),
    ("train-vqvae", "--k", "1000000000", "--grid", "2x4"),
    ("sample", "--n", "1000000000", "--mode", "vae"),
]


@pytest.mark.parametrize("args", HUGE, ids=lambda a: f"{a[0]} {a[1]}")
def test_sizes_that_cannot_fit_are_refused_up_front(tiny_run, args):
    before = tree_digest(tiny_run)
    result = cli(args[0], "--run-dir", tiny_run, "--device", "cpu", "-q", *args[1:])
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "needs about" in result.stderr and args[1] in result.stderr
    assert tree_digest(tiny_run) == before


def test_require_compares_with_what_is_available():
    import torch

    cpu = torch.device("cpu")
    require(1024, cpu, "a kilobyte", "never")
    with pytest.raises(GeovqError, match="use less"):
        require(10 * available_bytes(cpu), cpu, "ten machines", "use less")


def test_compare_refuses_samples_that_cannot_fit(tiny_run):
    quantized = cli("quantize", "--run-dir", tiny_run, "--device", "cpu", "-q", "--k", "4")
    assert quantized.exit_code == 0, quantized.stderr
    before = tree_digest(tiny_run)
    result = cli(
        "compare", "--run-dir", tiny_run, "--device", "cpu", "-q", "--samples", "1000000000"
    )
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "compare --samples 1000000000 needs about" in result.stderr
    assert tree_digest(tiny_run) == before
