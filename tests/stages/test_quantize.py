import json
import math

import pytest
import torch

from geovq.quant.distances import w2_sq
from geovq.rundir import RunDir
from tests.helpers import cli, snapshot

BASE = ("--device", "cpu", "-q")


@pytest.mark.parametrize("metric", ["euclidean", "w2", "geodesic"])
def test_quantize_writes_codebook_codes_and_metrics(tiny_run, metric):
    result = cli(
        "quantize",
        "--run-dir",
        tiny_run,
        "--metric",
        metric,
        "--k",
        "16",
        "--json",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    run = RunDir(tiny_run)
    codebook, meta = run.load_tensors(f"quant/{metric}-k16/codebook.safetensors", "codebook")
    codes, _ = run.load_tensors(f"quant/{metric}-k16/codes.safetensors", "codes")
    assert codebook["mu"].shape == codebook["sigma"].shape == (16, 4)
    assert codes["train.codes"].shape == codes["test.codes"].shape == (64, 2, 4)
    assert codes["test.codes"].dtype == torch.int64
    assert metrics["bits_per_image"] == 8 * math.log2(16)
    test = metrics["splits"]["test"]
    assert 0 < test["utilisation"] <= 1 and test["dead_codes"] == round(
        16 * (1 - test["utilisation"])
    )
    assert test["mse_per_pixel"] > 0 and test["vae_mse_per_pixel"] > 0
    # Distortion is the mean W2² from each chunk to its codeword, recomputed here directly.
    latents, _ = run.load_tensors("latents.safetensors", "latents")
    mu = latents["test.mu"].view(64, 8, 4).double()
    sigma = torch.exp(0.5 * latents["test.logvar"]).view(64, 8, 4).double()
    c = codes["test.codes"].view(64, 8)
    expected = w2_sq(mu, sigma, codebook["mu"][c].double(), codebook["sigma"][c].double()).mean()
    assert test["distortion"] == pytest.approx(float(expected), rel=1e-6)
    assert meta["kind"] == "posthoc" and meta["grid"] == [2, 4]
    # The continuous reference (decoding mu, measured by extract): decoded here directly.
    from geovq.artifacts import Reader, load_vae
    from geovq.data import load_dataset
    from geovq.settings import DataSettings

    vae, _ = load_vae(Reader(run), torch.device("cpu"))
    data = load_dataset(DataSettings(**run.stage("train-vae")["settings"]["data"])).splits
    for split in ("train", "test"):
        with torch.no_grad():
            recon = torch.sigmoid(vae.decode(latents[f"{split}.mu"]))
        direct = float((recon - data[split].images.float() / 255).pow(2).mean())
        assert metrics["splits"][split]["vae_mse_per_pixel"] == pytest.approx(direct, rel=1e-5)


def test_w2_test_codes_are_the_nearest_codeword(tiny_run):
    assert (
        cli("quantize", "--run-dir", tiny_run, "--metric", "w2", "--k", "8", *BASE).exit_code == 0
    )
    run = RunDir(tiny_run)
    codebook, _ = run.load_tensors("quant/w2-k8/codebook.safetensors", "codebook")
    codes, _ = run.load_tensors("quant/w2-k8/codes.safetensors", "codes")
    latents, _ = run.load_tensors("latents.safetensors", "latents")
    points = torch.cat(
        [latents["test.mu"].view(-1, 4), torch.exp(0.5 * latents["test.logvar"]).view(-1, 4)], 1
    ).double()
    words = torch.cat([codebook["mu"], codebook["sigma"]], 1).double()
    assert torch.equal(torch.cdist(points, words).argmin(1), codes["test.codes"].flatten())


def test_per_position_codebooks(tiny_run):
    args = (
        "quantize",
        "--run-dir",
        tiny_run,
        "--metric",
        "w2",
        "--k",
        "8",
        "--codebook",
        "per-position",
    )
    assert cli(*args, *BASE).exit_code == 0
    codebook, meta = RunDir(tiny_run).load_tensors(
        "quant/w2-k8-pp/codebook.safetensors", "codebook"
    )
    assert codebook["mu"].shape == (8, 8, 4) and meta["per_position"] is True


def test_same_seed_same_codebook_and_codes(tiny_run):
    args = ("quantize", "--run-dir", tiny_run, "--metric", "geodesic", "--k", "8", *BASE)
    assert cli(*args).exit_code == 0
    first = [
        (tiny_run / f"quant/geodesic-k8/{f}.safetensors").read_bytes()
        for f in ("codebook", "codes")
    ]
    assert cli(*args, "--force").exit_code == 0
    second = [
        (tiny_run / f"quant/geodesic-k8/{f}.safetensors").read_bytes()
        for f in ("codebook", "codes")
    ]
    assert first == second


BAD = [
    (("--k", "0"), "--k"),
    (("--k", "513"), "--k 513"),
    (("--chunks", "5"), "--chunks 5"),
    (("--grid", "3x3"), "3x3"),
    (("--metric", "cosine"), "--metric"),
    (("--fit-split", "valid"), "--fit-split valid"),
    (("--metric", "geodesic", "--knn", "600"), "--knn 600"),
    (("--metric", "geodesic", "--knn", "0"), "--knn"),
]


@pytest.mark.parametrize(("args", "needle"), BAD)
def test_bad_input(tiny_run, args, needle):
    before = snapshot(tiny_run)
    result = cli("quantize", "--run-dir", tiny_run, "--k", "8", *args)
    assert result.exit_code != 0 and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tiny_run) == before


def test_no_latents(tmp_path, tiny_run):
    (tiny_run / "latents.safetensors").unlink()
    result = cli("quantize", "--run-dir", tiny_run, "--k", "8")
    assert result.exit_code != 0 and "geovq extract" in result.stderr


def test_existing_name_needs_force(tiny_run):
    args = ("quantize", "--run-dir", tiny_run, "--k", "8", "--name", "x")
    assert cli(*args, *BASE).exit_code == 0
    before = snapshot(tiny_run)
    same = cli(*args, "--json", "--device", "cpu")  # identical settings and inputs: a no-op
    assert same.exit_code == 0 and "is current" in json.loads(same.stdout)["notes"][0]
    result = cli("quantize", "--run-dir", tiny_run, "--k", "4", "--name", "x")
    assert result.exit_code != 0 and "--force" in result.stderr
    assert snapshot(tiny_run) == before


def test_spatial_vae_gives_7x7_codes_and_392_bits(tmp_path):
    run = tmp_path / "run"
    train = ("train-vae", "--run-dir", run, "--limit", "16", "--epochs", "1", "--vae", "spatial")
    assert cli(*train, "--latent", "spatial", *BASE).exit_code == 0
    assert cli("extract", "--run-dir", run, "--vae", "spatial", *BASE).exit_code == 0
    result = cli(
        "quantize", "--run-dir", run, "--vae", "spatial", "--k", "256", "--json", "--device", "cpu"
    )
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["bits_per_image"] == 392 and metrics["grid"] == [7, 7]
    codes, _ = RunDir(run).load_tensors("quant/w2-k256-spatial/codes.safetensors", "codes")
    assert codes["test.codes"].shape == (16, 7, 7)


def _quantize(run, **options):
    from geovq.settings import load_settings
    from geovq.stages import quantize

    return quantize.run(load_settings({"run_dir": run, "device": "cpu", "quantize": options}))


def test_scalar_quantize_packs_per_dimension_levels(tiny_run):
    result = _quantize(tiny_run, metric="scalar", levels="2,2,4,4")
    metrics = result.metrics
    assert metrics["k"] == 64 and metrics["levels"] == [2, 2, 4, 4]
    assert metrics["bits_per_image"] == pytest.approx(8 * 6)
    run = RunDir(tiny_run)
    codebook, meta = run.load_tensors("quant/scalar-k64/codebook.safetensors", "codebook")
    codes, _ = run.load_tensors("quant/scalar-k64/codes.safetensors", "codes")
    assert int(meta["k"]) == 64 and codebook["mu"].shape == (64, 4)
    latents, _ = run.load_tensors("latents.safetensors", "latents")
    mu = latents["test.mu"].view(-1, 4).double()
    # each code's digits are the nearest level of each dimension (brute force per dimension)
    flat = codes["test.codes"].flatten()
    for dim, (count, radix) in enumerate(zip((2, 2, 4, 4), (1, 2, 4, 16), strict=True)):
        levels = codebook["mu"][torch.arange(count) * radix, dim].double()
        nearest = (mu[:, dim : dim + 1] - levels).abs().argmin(1)
        assert torch.equal((flat // radix) % count, nearest)


def test_scalar_levels_must_fit_the_chunk(tiny_run):
    from geovq import GeovqError

    before = snapshot(tiny_run)
    with pytest.raises(GeovqError, match="4 dimensions"):
        _quantize(tiny_run, metric="scalar", levels="4,4")
    assert snapshot(tiny_run) == before


def test_geodesic_barycenter_is_its_own_source(tiny_run):
    result = _quantize(tiny_run, metric="geodesic", k=8, codeword="barycenter")
    assert (
        result.metrics["name"] == "geodesic-bary-k8" and result.metrics["codeword"] == "barycenter"
    )
    run = RunDir(tiny_run)
    codebook, _ = run.load_tensors("quant/geodesic-bary-k8/codebook.safetensors", "codebook")
    codes, _ = run.load_tensors("quant/geodesic-bary-k8/codes.safetensors", "codes")
    latents, _ = run.load_tensors("latents.safetensors", "latents")
    mu = latents["train.mu"].view(-1, 4)
    train_codes = codes["train.codes"].flatten()
    for cell in train_codes.unique():
        assert torch.allclose(codebook["mu"][cell], mu[train_codes == cell].mean(0), atol=1e-5)


def test_scalar_levels_split_k_over_the_chunk_dimensions():
    from geovq import GeovqError
    from geovq.quant.settings_fit import scalar_levels
    from geovq.settings import QuantizeSettings

    assert scalar_levels(QuantizeSettings(metric="scalar", k=256), 4) == (4, 4, 4, 4)
    assert scalar_levels(QuantizeSettings(metric="scalar", k=256), 2) == (16, 16)
    assert scalar_levels(QuantizeSettings(metric="scalar", k=32), 4) == (4, 2, 2, 2)
    assert scalar_levels(QuantizeSettings(metric="scalar", k=8, levels="2,4"), 2) == (2, 4)
    with pytest.raises(GeovqError, match="--levels"):
        scalar_levels(QuantizeSettings(metric="scalar", k=48), 4)


def test_transform_quantize_codes_the_whole_latent_in_l_log2_k_bits(tiny_run):
    from geovq.artifacts import Reader, load_vae
    from geovq.data import load_dataset
    from geovq.quant.transform import TransformCode, decode
    from geovq.settings import DataSettings

    result = _quantize(tiny_run, metric="transform", k=16)
    metrics = result.metrics
    assert metrics["name"] == "transform-k16" and metrics["bits_per_image"] == 8 * 4
    run = RunDir(tiny_run)
    tensors, meta = run.load_tensors("quant/transform-k16/codebook.safetensors", "codebook")
    codes, _ = run.load_tensors("quant/transform-k16/codes.safetensors", "codes")
    code = TransformCode.from_tensors(tensors, 16)
    assert int(code.bits.sum()) == 32 and codes["test.codes"].shape == (64, 2, 4)
    assert int(codes["test.codes"].max()) < 16 and meta["metric"] == "transform"
    # the reported MSE is that of the VAE decoding the code's latents, recomputed here
    vae, _ = load_vae(Reader(run), torch.device("cpu"))
    data = load_dataset(DataSettings(**run.stage("train-vae")["settings"]["data"])).splits
    with torch.no_grad():
        latents = decode(code, codes["test.codes"].flatten(1)).float()
        recon = torch.sigmoid(vae.decode(latents))
    direct = float((recon - data["test"].images.float() / 255).pow(2).mean())
    assert metrics["splits"]["test"]["mse_per_pixel"] == pytest.approx(direct, rel=1e-5)


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"k": 12}, "power of two"),
        ({"k": 2**40}, "at most 256"),
        ({"k": 16, "codebook": "per-position"}, "no per-position"),
    ],
)
def test_transform_quantize_refuses_what_it_cannot_code(tiny_run, options, needle):
    from geovq import GeovqError

    before = snapshot(tiny_run)
    with pytest.raises(GeovqError, match=needle) as caught:
        _quantize(tiny_run, metric="transform", **options)
    assert "\n" not in str(caught.value)
    assert snapshot(tiny_run) == before
