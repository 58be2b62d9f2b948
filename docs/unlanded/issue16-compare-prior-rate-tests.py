import sys
def append(path, text):
    open(path, "a").write(text)
append("tests/evaluation/test_rates.py", '''


def test_prior_rate_points_pairs_and_families():
    from geovq.evaluation.rates import prior_bits_per_image

    entries = {name: dict(entry) for name, entry in ENTRIES.items()}
    entries["quant/a"]["prior"] = {"splits": {"test": {"bits_per_image": 41.5}}}
    entries["quant/a"]["budget"] = {"epochs": 17, "wall_seconds": 30.0}
    entries["vqvae/c"]["prior"] = {"splits": {"test": {"bits_per_image": 55.0}}}
    entries["vqvae/c"]["budget"] = {"epochs": 17, "wall_seconds": 20.0}
    entries["vqvae/f"] = {**entries["vqvae/c"], "metric": "fsq", "prior": None}
    assert prior_bits_per_image(entries["quant/a"], "test") == 41.5
    assert prior_bits_per_image(entries["quant/b"], "test") is None
    # pairs stay on nominal bits and carry both prior rates and both budgets
    pair = next(p for p in equal_rate_pairs(entries, "test") if p["vqvae"] == "vqvae/c")
    assert (pair["bits_per_image"], pair["posthoc_prior_bits"], pair["vqvae_prior_bits"]) == (
        64.0,
        41.5,
        55.0,
    )
    assert pair["posthoc_budget"]["epochs"] == pair["vqvae_budget"]["epochs"] == 17
    prior_points = {p["name"]: p for p in rate_points(entries, "test", rate="prior")}
    assert set(prior_points) == {"quant/a", "vqvae/c"}  # sources without a prior left out
    assert prior_points["quant/a"]["bits_per_image"] == 41.5
    assert family_of(entries["vqvae/f"]) == "fsq"
    bary = {**entries["quant/b"], "codeword": "barycenter"}
    assert family_of(bary) == "post-hoc geodesic-bary per-position (spatial)"
''')
append("tests/evaluation/test_prior_nll.py", '''


def test_prior_rate_per_image_is_the_nll_summed_over_positions():
    """compare's prior bits/image (bits per code x positions) against a per-image sum."""
    torch.manual_seed(1)
    model = GatedPixelCNN(PixelCNNConfig(num_codes=6, height=3, width=2, hidden=8, layers=2))
    model.eval()
    codes = torch.randint(0, 6, (5, 3, 2), generator=torch.Generator().manual_seed(2))
    per_image = []
    with torch.no_grad():
        for image in codes:
            logits = model(image.unsqueeze(0))[0]  # (K, H, W)
            probs = torch.softmax(logits, dim=0)
            nats = sum(
                -math.log(float(probs[image[r, c], r, c])) for r in range(3) for c in range(2)
            )
            per_image.append(nats / math.log(2))
    bits_per_image = split_bits_per_code(model, codes, None) * 6
    assert bits_per_image == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)
''')
print("tests appended")
