import pytest

from geovq.evaluation.rates import (
    equal_rate_pairs,
    family_of,
    method_of,
    pair_notes,
    prior_bits_per_image,
    rate_points,
    without_prior_rate,
)

ENTRIES = {
    "quant/a": {
        "kind": "posthoc",
        "bits_per_image": 64.0,
        "metric": "w2",
        "vae": "",
        "decoder": "quant/a/decoder.safetensors",
        "per_position": False,
        "splits": {"test": {"mse_per_pixel": 0.02, "utilisation": 1.0}},
    },
    "quant/b": {
        "kind": "posthoc",
        "bits_per_image": 392.0,
        "metric": "geodesic",
        "vae": "spatial",
        "decoder": "vae.safetensors",
        "per_position": True,
        "splits": {"test": {"mse_per_pixel": 0.01, "utilisation": 1.0}},
    },
    "vqvae/c": {
        "kind": "vqvae",
        "bits_per_image": 64.0,
        "metric": "vq-vae",
        "vae": "",
        "decoder": "vqvae/c/model.safetensors",
        "per_position": False,
        "splits": {"test": {"mse_per_pixel": 0.04, "utilisation": 0.5}},
    },
}


def test_equal_rate_pairs_match_bits():
    [pair] = equal_rate_pairs(ENTRIES, "test")
    assert (pair["posthoc"], pair["vqvae"], pair["mse_ratio"]) == ("quant/a", "vqvae/c", 0.5)
    assert pair_notes([pair]) == [
        "quant/a vs vqvae/c at 64 bits/image: MSE ratio 0.500 (post hoc better)"
    ]


def test_families_and_points():
    assert family_of(ENTRIES["quant/a"]) == "post-hoc w2 (flat) + refit"
    assert family_of(ENTRIES["quant/b"]) == "post-hoc geodesic per-position (spatial)"
    assert family_of(ENTRIES["vqvae/c"]) == "vq-vae"
    points = {p["name"]: (p["bits_per_image"], p["mse"]) for p in rate_points(ENTRIES, "test")}
    assert points == {"quant/a": (64.0, 0.02), "quant/b": (392.0, 0.01), "vqvae/c": (64.0, 0.04)}


def _with_priors() -> dict[str, dict]:
    entries = {name: dict(entry) for name, entry in ENTRIES.items()}
    entries["quant/a"]["prior"] = {"splits": {"test": {"bits_per_image": 41.5}}}
    entries["quant/a"]["budget"] = {"epochs": 17, "wall_seconds": 30.0}
    entries["vqvae/c"]["prior"] = {"splits": {"test": {"bits_per_image": 55.0}}}
    entries["vqvae/c"]["budget"] = {"epochs": 17, "wall_seconds": 20.0}
    entries["vqvae/f"] = {**entries["vqvae/c"], "metric": "fsq", "prior": None}
    return entries


def test_prior_rate_is_read_per_split_and_none_without_a_prior():
    entries = _with_priors()
    assert prior_bits_per_image(entries["quant/a"], "test") == 41.5
    assert prior_bits_per_image(entries["quant/a"], "train") is None  # not evaluated there
    assert prior_bits_per_image(entries["quant/b"], "test") is None
    assert prior_bits_per_image(entries["vqvae/f"], "test") is None


def test_pairs_stay_on_nominal_bits_and_carry_prior_rates_and_budgets():
    pairs = {p["vqvae"]: p for p in equal_rate_pairs(_with_priors(), "test")}
    assert set(pairs) == {"vqvae/c", "vqvae/f"}  # 64 nominal bits each, whatever the prior
    pair = pairs["vqvae/c"]
    assert pair["bits_per_image"] == 64.0
    assert (pair["posthoc_prior_bits_per_image"], pair["vqvae_prior_bits_per_image"]) == (41.5, 55)
    assert pair["posthoc_budget"] == {"epochs": 17, "wall_seconds": 30.0}
    assert pair["vqvae_budget"] == {"epochs": 17, "wall_seconds": 20.0}
    assert pairs["vqvae/f"]["vqvae_prior_bits_per_image"] is None


def test_prior_rate_points_leave_out_sources_without_a_prior():
    entries = _with_priors()
    prior = {p["name"]: p for p in rate_points(entries, "test", rate="prior")}
    assert set(prior) == {"quant/a", "vqvae/c"}
    assert prior["quant/a"]["bits_per_image"] == 41.5 and prior["quant/a"]["mse"] == 0.02
    assert without_prior_rate(entries, "test") == ["quant/b", "vqvae/f"]
    nominal = {p["name"]: p["bits_per_image"] for p in rate_points(entries, "test")}
    assert nominal == {"quant/a": 64.0, "quant/b": 392.0, "vqvae/c": 64.0, "vqvae/f": 64.0}
    with pytest.raises(ValueError, match="rate"):
        rate_points(entries, "test", rate="entropy")


def test_methods_tell_the_families_apart():
    entries = _with_priors()
    bary = {**entries["quant/b"], "codeword": "barycenter"}
    medoid = {**entries["quant/b"], "codeword": "medoid"}
    assert [method_of(e) for e in (entries["vqvae/c"], entries["vqvae/f"], bary, medoid)] == [
        "vq-vae",
        "fsq",
        "geodesic-bary",
        "geodesic",
    ]
    assert family_of(entries["vqvae/f"]) == "fsq"
    assert family_of(bary) == "post-hoc geodesic-bary per-position (spatial)"
    points = {p["name"]: p for p in rate_points(entries, "test")}
    assert (points["quant/a"]["refit"], points["quant/b"]["refit"]) == (True, False)
    assert (points["quant/b"]["vae"], points["vqvae/f"]["method"]) == ("spatial", "fsq")
