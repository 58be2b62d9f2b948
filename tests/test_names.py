"""One rule for every user-given name: traversal and odd names never reach the filesystem."""

import pytest

from geovq import GeovqError
from geovq.names import check_name, parse_source
from tests.helpers import cli, tree_digest

GOOD = ["w2-k256", "vqvae-2x4-k16", "spatial", "A_1", "x" * 64]
BAD = ["../../escaped", "/abs/path", "../vqvae/vqvae-2x4-k16", "..", ".hidden", "a/b", "a\\b",
       "", "x" * 65, "-leading", "sp ace", "tab\t", "nul\x00", "é"]  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_plain_names_pass(name):
    assert check_name(name) == name
    assert parse_source(f"quant/{name}") == ("quant", name)


@pytest.mark.parametrize("name", BAD)
def test_traversal_and_odd_names_fail(name):
    with pytest.raises(GeovqError, match="plain name"):
        check_name(name, "--name")
    with pytest.raises(GeovqError):
        parse_source(f"quant/{name}")


@pytest.mark.parametrize("source", ["quant", "quant/", "other/x", "/quant/x", "quant/a/b", ""])
def test_malformed_sources_fail(source):
    with pytest.raises(GeovqError):
        parse_source(source)


CLI_CASES = [
    ("quantize", "--k", "8", "--name", "../../escaped"),
    ("quantize", "--k", "8", "--name", "/abs/path"),
    ("quantize", "--k", "8", "--name", "../vqvae/vqvae-2x4-k16", "--force"),
    ("quantize", "--k", "8", "--name", ".hidden"),
    ("quantize", "--k", "8", "--vae", "../x"),
    ("train-vqvae", "--grid", "2x4", "--k", "8", "--epochs", "1", "--name", "../evil"),
    ("train-vae", "--epochs", "1", "--vae", "../../vae"),
    ("extract", "--dataset", "mnist5k", "--as", "../up"),
    ("train-prior", "--source", "quant/../../x"),
    ("sample", "--source", "vqvae/../../x", "--mode", "random"),
    ("refit-decoder", "--source", "quant/../x"),
]


@pytest.mark.parametrize("args", CLI_CASES, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_cli_refuses_traversal_and_changes_nothing(tiny_run, args):
    outside = sorted(p.name for p in tiny_run.parent.iterdir())
    before = tree_digest(tiny_run)
    result = cli(args[0], "--run-dir", tiny_run, "--device", "cpu", *args[1:])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "plain name" in result.stderr or "quant/<name>" in result.stderr
    assert tree_digest(tiny_run) == before
    assert sorted(p.name for p in tiny_run.parent.iterdir()) == outside
