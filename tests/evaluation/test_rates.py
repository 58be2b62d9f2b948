from geovq.evaluation.rates import equal_rate_pairs, family_of, pair_notes, rate_points

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
