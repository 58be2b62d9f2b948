import json
import math
import shutil

import pytest
import torch

from geovq.data import load_dataset
from geovq.models.vae import VAE, VAEConfig
from geovq.rundir import RunDir
from geovq.settings import DataSettings
from tests.helpers import cli, snapshot

BASE = ("--device", "cpu", "-q")


@pytest.fixture(scope="module")
def compared(tiny_run_template, tmp_path_factory):
    run = tmp_path_factory.mktemp("compare") / "run"
    shutil.copytree(tiny_run_template, run)
    for args in (
        ("quantize", "--metric", "w2", "--k", "16"),
        ("quantize", "--metric", "geodesic", "--k", "16"),
        ("refit-decoder", "--source", "quant/geodesic-k16", "--epochs", "2"),
        ("train-vqvae", "--grid", "2x4", "--k", "16", "--epochs", "1", "--init", "random"),
        ("train-prior", "--source", "quant/w2-k16", "--epochs", "1"),
    ):
        result = cli(*args, "--run-dir", run, *BASE)
        assert result.exit_code == 0, result.stderr
    result = cli(
        "compare",
        "--run-dir",
        run,
        "--samples",
        "32",
        "--sweep-k",
        "4,8,1048576",
        "--json",
        *BASE[:2],
    )
    assert result.exit_code == 0, result.stderr
    return run, json.loads(result.stdout)["metrics"]


def test_compare_json_has_every_quantization(compared):
    run, metrics = compared
    assert set(metrics["sources"]) == {
        "quant/w2-k16",
        "quant/geodesic-k16",
        "quant/geodesic-k16 [vae decoder]",
        "vqvae/vqvae-2x4-k16",
    }
    on_disk = json.loads((run / "report/test/metrics.json").read_text())
    assert set(on_disk["sources"]) == set(metrics["sources"])
    w2 = metrics["sources"]["quant/w2-k16"]
    assert w2["prior"]["splits"]["test"]["bits_per_code"] > 0
    assert w2["prior"]["uniform_bits_per_code"] == pytest.approx(4.0)
    assert metrics["sources"]["vqvae/vqvae-2x4-k16"]["prior"] is None
    assert "vae.safetensors" in metrics["vae_reference"]
    assert metrics["smoke_run"]  # 64 images, one epoch
    assert (run / "report/test/report.md").read_text().splitlines()[2].startswith("> **SMOKE RUN")


def _decoded_by_hand(run, name: str) -> torch.Tensor:
    """Test reconstructions of a post-hoc source without geovq's source or evaluation code."""
    from safetensors.torch import load_file

    vae_tensors = load_file(run / "vae.safetensors")
    with open(run / "vae.safetensors", "rb") as stream:
        header = json.loads(stream.read(int.from_bytes(stream.read(8), "little")))
    config = json.loads(header["__metadata__"]["geovq"])["config"]
    config = VAEConfig.from_json(config if isinstance(config, str) else json.dumps(config))
    vae = VAE(config).eval()
    vae.load_state_dict(vae_tensors)
    codebook = load_file(run / f"{name}/codebook.safetensors")["mu"]
    codes = load_file(run / f"{name}/codes.safetensors")["test.codes"].flatten(1)
    with torch.no_grad():
        return torch.sigmoid(vae.decode(codebook[codes].reshape(codes.shape[0], -1)))


def test_reconstruction_mse_matches_decoding_by_hand(compared):
    run, metrics = compared
    images = load_dataset(DataSettings(limit=64)).splits["test"].images.double() / 255
    recons = _decoded_by_hand(run, "quant/w2-k16").double()  # w2 has no refit decoder
    by_hand = float(((recons - images) ** 2).mean())
    assert metrics["sources"]["quant/w2-k16"]["splits"]["test"]["mse_per_pixel"] == pytest.approx(
        by_hand, rel=1e-5
    )


def test_equal_rate_pairs_by_bits(compared):
    _, metrics = compared
    pairs = {(p["posthoc"], p["vqvae"]) for p in metrics["equal_rate_pairs"]}
    assert pairs == {
        ("quant/w2-k16", "vqvae/vqvae-2x4-k16"),
        ("quant/geodesic-k16", "vqvae/vqvae-2x4-k16"),
        ("quant/geodesic-k16 [vae decoder]", "vqvae/vqvae-2x4-k16"),
    }


def test_rate_distortion_sweep_points(compared):
    run, metrics = compared
    assert set(metrics["rate_distortion"]) == {"nominal", "prior"}  # --rate both, the default
    sweep = [p for p in metrics["rate_distortion"]["nominal"] if p.get("sweep")]
    assert {(p["family"].split()[1], p["bits_per_image"]) for p in sweep} == {
        (metric, bits) for metric in ("w2", "geodesic") for bits in (16.0, 24.0)
    }
    # 2**20 codewords is more than the tiny fit split's chunks: skipped, and said for each family
    skipped = metrics["sweep_skipped"]
    assert len(skipped) == 2 and all("K=1048576" in line and "points" in line for line in skipped)
    assert (run / "report/test/rate_distortion.png").is_file()
    # the sweep's codebooks have no prior: no prior rate
    assert not any(p.get("sweep") for p in metrics["rate_distortion"]["prior"])


def _prior_bits_by_hand(run, name: str, split: str = "test") -> float:
    """Mean over images of the prior's NLL summed over positions, in bits: the PixelCNN built
    from its file, log-softmax of its logits gathered at the split's codes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from geovq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig

    path = run / f"prior/{name.replace('/', '-')}.safetensors"
    with safe_open(path, "pt") as stream:
        meta = json.loads(stream.metadata()["geovq"])
    config = meta["config"]
    config = PixelCNNConfig.from_json(config if isinstance(config, str) else json.dumps(config))
    model = GatedPixelCNN(config).eval()
    model.load_state_dict(load_file(path))
    codes = load_file(run / f"{name}/codes.safetensors")[f"{split}.codes"]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(codes).double(), dim=1)  # (N, K, H, W)
    nats = -log_probs.gather(1, codes.unsqueeze(1)).squeeze(1)  # (N, H, W)
    return float(nats.sum(dim=(1, 2)).mean()) / math.log(2)


def test_prior_rate_is_the_nll_summed_over_positions(compared):
    run, metrics = compared
    by_hand = _prior_bits_by_hand(run, "quant/w2-k16")
    entry = metrics["sources"]["quant/w2-k16"]
    assert entry["prior"]["splits"]["test"]["bits_per_image"] == pytest.approx(by_hand, rel=1e-5)
    prior_points = {p["name"]: p for p in metrics["rate_distortion"]["prior"]}
    assert prior_points["quant/w2-k16"]["bits_per_image"] == pytest.approx(by_hand, rel=1e-5)
    nominal = {p["name"]: p for p in metrics["rate_distortion"]["nominal"] if not p.get("sweep")}
    assert nominal["quant/w2-k16"]["bits_per_image"] == 8 * 4  # L log2 K: 8 chunks, K = 16
    assert prior_points["quant/w2-k16"]["mse"] == nominal["quant/w2-k16"]["mse"]
    [pair] = [p for p in metrics["equal_rate_pairs"] if p["posthoc"] == "quant/w2-k16"]
    assert pair["posthoc_prior_bits_per_image"] == pytest.approx(by_hand, rel=1e-5)
    assert pair["vqvae_prior_bits_per_image"] is None
    assert _headline_cells(run, "quant/w2-k16")[2] == f"{by_hand:.1f}"  # prior bits/img


def test_sources_without_a_prior_are_left_out_of_the_prior_rate_figure(compared):
    run, metrics = compared
    without = {"quant/geodesic-k16", "quant/geodesic-k16 [vae decoder]", "vqvae/vqvae-2x4-k16"}
    for name in without:
        assert metrics["sources"][name]["prior"] is None
    assert {p["name"] for p in metrics["rate_distortion"]["prior"]} == {"quant/w2-k16"}
    assert set(metrics["prior_rate_left_out"]) == without
    note = next(line for line in _report(run) if line.startswith("Left out of the prior-rate"))
    assert all(name in note for name in without)
    assert metrics["figures"]["rate_distortion_prior"] == "report/test/rate_distortion_prior.png"
    assert _headline_cells(run, "vqvae/vqvae-2x4-k16")[2] == "-"


def test_training_budget_is_the_sum_of_the_recorded_stages(compared):
    run, metrics = compared
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    vae, extract = stages["train-vae"], stages["extract"]
    quantize, refit = stages["quantize/geodesic-k16"], stages["refit-decoder/geodesic-k16"]
    vqvae = stages["train-vqvae/vqvae-2x4-k16"]
    expected = {
        "quant/geodesic-k16": (
            vae["settings"]["vae"]["epochs"] + refit["settings"]["refit"]["epochs"],
            sum(r["wall_time_s"] for r in (vae, extract, quantize, refit)),
        ),
        "quant/geodesic-k16 [vae decoder]": (
            vae["settings"]["vae"]["epochs"],
            sum(r["wall_time_s"] for r in (vae, extract, quantize)),
        ),
        "vqvae/vqvae-2x4-k16": (vqvae["settings"]["vqvae"]["epochs"], vqvae["wall_time_s"]),
    }
    assert expected["quant/geodesic-k16"][0] == 3  # 1 VAE epoch + 2 refit epochs
    for name, (epochs, seconds) in expected.items():
        budget = metrics["sources"][name]["budget"]
        assert budget["epochs"] == epochs
        assert budget["wall_seconds"] == pytest.approx(seconds)
    [pair] = [p for p in metrics["equal_rate_pairs"] if p["posthoc"] == "quant/geodesic-k16"]
    assert (pair["posthoc_budget"]["epochs"], pair["vqvae_budget"]["epochs"]) == (3, 1)
    cells = _headline_cells(run, "quant/geodesic-k16")
    assert cells[3:6] == [  # mse/pixel, epochs, wall s
        f"{metrics['sources']['quant/geodesic-k16']['splits']['test']['mse_per_pixel']:.5f}",
        "3",
        f"{expected['quant/geodesic-k16'][1]:.1f}",
    ]
    pair_row = next(line for line in _report(run) if line.startswith("| quant/geodesic-k16 | vq"))
    assert pair_row.split(" | ")[-2:] == [
        "3 / 1",
        f"{expected['quant/geodesic-k16'][1]:.1f} / {expected['vqvae/vqvae-2x4-k16'][1]:.1f} |",
    ]


def test_compare_rate_prior_draws_only_the_prior_rate_figure(compared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(compared[0], run)
    args = ("--rate", "prior", "--samples", "32", "--force", "--json", *BASE[:2])
    result = cli("compare", "--run-dir", run, *args)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    assert list(metrics["rate_distortion"]) == ["prior"]
    [point] = metrics["rate_distortion"]["prior"]
    assert point["bits_per_image"] == pytest.approx(_prior_bits_by_hand(run, "quant/w2-k16"))
    assert (run / "report/test/rate_distortion_prior.png").is_file()
    assert not (run / "report/test/rate_distortion.png").exists()  # the earlier one, removed
    assert any(
        "Left out of the prior-rate figure" in note for note in json.loads(result.stdout)["notes"]
    )


def test_compare_rejects_an_unknown_rate(compared):
    result = cli("compare", "--run-dir", compared[0], "--rate", "entropy")
    assert result.exit_code != 0 and "entropy" in result.stderr


def _report(run) -> list[str]:
    return (run / "report/test/report.md").read_text().splitlines()


def _headline_cells(run, name: str) -> list[str]:
    """The cells of a source's row in report.md's headline table (its first table)."""
    row = next(line for line in _report(run) if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_figures_are_listed_and_written(compared):
    run, metrics = compared
    text = (run / "report/test/report.md").read_text()
    for label, path in metrics["figures"].items():
        assert (run / path).is_file() and path.startswith("report/test/")
        assert f"![{label}]({path.rsplit('/', 1)[-1]})" in text
    assert {p.name for p in (run / "report/test").glob("*.png")} == {
        path.rsplit("/", 1)[-1] for path in metrics["figures"].values()
    }


def test_compare_of_two_splits_keeps_both_reports(compared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(compared[0], run)
    (run / "report/test/samples-quant-gone.png").write_bytes(b"stale")
    for split in ("train", "test"):
        args = ("--split", split, "--samples", "16", "--force", *BASE)  # test: other settings
        result = cli("compare", "--run-dir", run, *args)
        assert result.exit_code == 0, result.stderr
    for split in ("train", "test"):
        report = json.loads((run / f"report/{split}/metrics.json").read_text())
        assert report["split"] == split
        assert (run / f"report/{split}/reconstructions.png").is_file()
    assert not (run / "report/test/samples-quant-gone.png").exists()
    # sample quality does not depend on the split: the second compare reused the first's
    train, test = (
        json.loads((run / f"report/{s}/metrics.json").read_text()) for s in ("train", "test")
    )
    assert train["sample_quality"] == test["sample_quality"]
    stages = RunDir(run).manifest()["stages"]
    assert "compare/train" in stages and "compare/test" in stages


@pytest.mark.parametrize("name", ["w2-k16", "geodesic-k16"])
def test_new_split_gets_the_codes_quantize_would_give_it(compared, tmp_path, name):
    """A split added after quantize: compare covers it without touching the quantization, and
    its on-the-fly codes are those a fresh quantize (fit and assignment in one go) writes."""
    from geovq.stages.sources import load_source

    run = tmp_path / "run"
    shutil.copytree(compared[0], run)
    codes_sha = RunDir(run).sha256(f"quant/{name}/codes.safetensors")
    result = cli("extract", "--run-dir", run, "--as", "extra", "--limit", "16", "--force", *BASE)
    assert result.exit_code == 0, result.stderr
    result = cli("compare", "--run-dir", run, "--split", "extra", "--samples", "16", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    assert set(metrics["sources"]) == set(compared[1]["sources"])
    assert all(entry["codes_on_the_fly"] for entry in metrics["sources"].values())
    assert "skipped" in metrics["sample_quality"]  # not the split's business; not resampled
    assert RunDir(run).sha256(f"quant/{name}/codes.safetensors") == codes_sha
    assert RunDir(run).outputs_current(f"quantize/{name}")

    on_the_fly = load_source(RunDir(run), f"quant/{name}", torch.device("cpu"))
    assert on_the_fly.add_split("extra", torch.empty(0), torch.empty(0))
    metric = name.split("-")[0]
    result = cli("quantize", "--run-dir", run, "--metric", metric, "--k", "16", "--force", *BASE)
    assert result.exit_code == 0, result.stderr
    # the codes are the point here; the geodesic refit decoder is stale after this quantize
    stored = load_source(RunDir(run), f"quant/{name}", torch.device("cpu"), use_refit=False)
    assert "extra" in stored.codes and "extra" not in stored.on_the_fly
    assert torch.equal(on_the_fly.codes["extra"], stored.codes["extra"])


def test_compare_without_quantization(tiny_run):
    before = snapshot(tiny_run)
    result = cli("compare", "--run-dir", tiny_run)
    assert result.exit_code != 0 and "geovq quantize" in result.stderr
    assert snapshot(tiny_run) == before


def test_compare_unknown_split(compared):
    result = cli("compare", "--run-dir", compared[0], "--split", "nope")
    assert result.exit_code != 0 and "--split nope" in result.stderr


def test_compare_bad_sweep(tiny_run):
    result = cli("compare", "--run-dir", tiny_run, "--sweep-k", "16,x")
    assert result.exit_code != 0 and "--sweep-k" in result.stderr


def test_compare_refuses_a_changed_vae(compared, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(compared[0], run)
    weights, meta = RunDir(run).load_tensors("vae.safetensors", "vae")
    weights["decoder.net.0.bias"] += 1
    RunDir(run).save_tensors("vae.safetensors", weights, meta)
    result = cli("compare", "--run-dir", run, "--samples", "8")
    assert result.exit_code != 0 and "changed since" in result.stderr
