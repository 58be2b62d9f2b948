import itertools
import math

import pytest
import torch

from geovq.models.pixelcnn import (
    GatedPixelCNN,
    PixelCNNConfig,
    code_nll_bits,
    greedy_codes,
    sample_codes,
    unigram_bits,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: intra-op threads only add overhead, and much more on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, **config) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(PixelCNNConfig(**config))


def dependency_matrix(model: GatedPixelCNN, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(P, P) bool, [i, j] = logits at raster position i have a nonzero gradient w.r.t. code j.

    The gradient is taken w.r.t. the code embeddings (a continuous relaxation of the codes), in
    float64 so that exact zeros are the architecture's, not rounding.
    """
    config = model.config
    positions = config.height * config.width
    model = model.double()
    codes = torch.randint(0, config.num_codes, (positions, config.height, config.width))
    embedded = {}

    def keep_embedding(module, inputs, output):
        embedded["x"] = output.detach().requires_grad_()
        return embedded["x"]

    handle = model.code_embedding.register_forward_hook(keep_embedding)
    try:
        if labels is not None:
            labels = labels.expand(positions)
        logits = model(codes, labels).flatten(2)  # (P, K, P)
    finally:
        handle.remove()
    # Batch element i only asks for position i, so one backward gives every row of the matrix.
    index = torch.arange(positions)
    logits[index, :, index].sum().backward()
    grad = embedded["x"].grad  # (P, H, W, hidden)
    return grad.abs().sum(dim=-1).flatten(1) > 0


@pytest.mark.parametrize(
    ("height", "width", "num_classes"),
    [(2, 4, 0), (7, 7, 0), (8, 8, 0), (1, 8, 0), (4, 2, 3), (7, 7, 3)],
)
def test_logits_see_exactly_the_raster_past(height, width, num_classes):
    model = make_model(num_codes=6, height=height, width=width, num_classes=num_classes)
    assert model.config.covers_past
    labels = torch.tensor([1]) if num_classes else None
    depends = dependency_matrix(model, labels)
    positions = height * width
    past = torch.ones(positions, positions, dtype=torch.bool).tril(diagonal=-1)
    assert not (depends & ~past).any(), "a position sees itself or a later code"
    assert (depends | ~past).all(), "blind spot: a position misses an earlier code"


def test_shallow_model_on_a_big_grid_has_a_blind_area_and_says_so():
    model = make_model(num_codes=4, height=8, width=8, layers=2)
    assert not model.config.covers_past
    depends = dependency_matrix(model)
    past = torch.ones(64, 64, dtype=torch.bool).tril(diagonal=-1)
    assert not (depends & ~past).any()
    assert not (depends | ~past).all()


def test_code_probabilities_sum_to_one_over_all_grids():
    # An independent check of causality and of code_nll_bits: the autoregressive product of
    # per-position softmaxes is a distribution over all K^(H*W) grids.
    model = make_model(num_codes=3, height=2, width=2, hidden=8, layers=2).double()
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
    with torch.no_grad():
        bits = code_nll_bits(model, grids)
    assert bits.shape == (81,)
    assert torch.exp2(-bits).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_code_nll_bits_matches_per_position_log_softmax():
    model = make_model(num_codes=5, height=3, width=4, hidden=8, layers=2)
    codes = torch.randint(0, 5, (4, 3, 4))
    bits = code_nll_bits(model, codes)
    log_probs = torch.log_softmax(model(codes), dim=1)
    expected = torch.zeros(4)
    for n, r, c in itertools.product(range(4), range(3), range(4)):
        expected[n] -= log_probs[n, codes[n, r, c], r, c] / math.log(2)
    torch.testing.assert_close(bits, expected)
    bits.sum().backward()  # usable as a training loss
    assert model.code_embedding.weight.grad is not None


def test_top_rows_logits_equal_the_full_forwards_top_rows():
    model = make_model(num_codes=7, height=5, width=3, num_classes=2).double()
    codes = torch.randint(0, 7, (4, 5, 3))
    labels = torch.tensor([0, 1, 1, 0])
    full = model(codes, labels)
    for rows in range(1, 6):
        top = model.top_rows_logits(codes[:, :rows], labels)
        torch.testing.assert_close(top, full[:, :, :rows])


def copy_left_codes(n: int, num_codes: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4, 4) codes: each copies its left neighbour w.p. 0.9, the first column its upper
    neighbour plus one; otherwise uniform. Entropy (3 + 15 * 0.674) / 16 = 0.82 bits/code, against
    a near-uniform unigram's 3."""
    codes = torch.randint(0, num_codes, (n, 4, 4), generator=generator)
    keep = torch.rand(n, 4, 4, generator=generator) < 0.9
    for r in range(4):
        for c in range(4):
            if c > 0:
                follow = codes[:, r, c - 1]
            elif r > 0:
                follow = (codes[:, r - 1, 0] + 1) % num_codes
            else:
                continue
            codes[:, r, c] = torch.where(keep[:, r, c], follow, codes[:, r, c])
    return codes


def test_prior_beats_unigram_on_spatially_structured_codes():
    generator = torch.Generator().manual_seed(0)
    train = copy_left_codes(2048, 8, generator)
    test = copy_left_codes(512, 8, generator)
    model = make_model(num_codes=8, height=4, width=4, hidden=16, layers=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(200):
        batch = train[torch.randint(0, len(train), (64,), generator=generator)]
        loss = code_nll_bits(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        prior_bits = code_nll_bits(model, test).sum().item() / test.numel()
    baseline_bits = unigram_bits(train, test, 8)
    assert baseline_bits > 2.9
    # Near the source's 0.82 bits/code; far below it would mean a code leaks into its own logits.
    assert 0.75 < prior_bits < 1.0


def test_unigram_bits_against_hand_computation():
    train = torch.tensor([[0, 0], [1, 0]])
    test = torch.tensor([0, 2])
    # Laplace: counts + 1 = [4, 2, 1] over 7.
    expected = -(math.log2(4 / 7) + math.log2(1 / 7)) / 2
    assert unigram_bits(train, test, 3) == pytest.approx(expected)
    with pytest.raises(ValueError):
        unigram_bits(train, torch.tensor([3]), 3)


def test_near_zero_temperature_equals_greedy():
    model = make_model(num_codes=16, height=7, width=7)
    generator = torch.Generator().manual_seed(1)
    sampled = sample_codes(model, 8, temperature=1e-5, generator=generator)
    assert sampled.shape == (8, 7, 7) and sampled.dtype == torch.long
    assert torch.equal(sampled, greedy_codes(model, 8))


def test_top_k_samples_lie_in_the_top_k_given_their_prefix():
    model = make_model(num_codes=16, height=2, width=4)
    generator = torch.Generator().manual_seed(2)
    sampled = sample_codes(model, 256, temperature=2.0, top_k=3, generator=generator)
    with torch.no_grad():
        logits = model(sampled)  # causal, so position i sees exactly the sampled prefix
    top3 = logits.topk(3, dim=1).indices  # (N, 3, H, W)
    assert (top3 == sampled.unsqueeze(1)).any(dim=1).all()
    # Without top-k, a hot temperature does leave the top 3.
    hot = sample_codes(model, 256, temperature=2.0, generator=generator)
    with torch.no_grad():
        hot_top3 = model(hot).topk(3, dim=1).indices
    assert not (hot_top3 == hot.unsqueeze(1)).any(dim=1).all()


def test_sampling_is_deterministic_given_the_generator():
    model = make_model(num_codes=10, height=2, width=4)

    def draw(seed: int) -> torch.Tensor:
        return sample_codes(model, 32, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


def test_labels_change_a_conditional_models_logits():
    model = make_model(num_codes=10, height=3, width=3, num_classes=4)
    codes = torch.randint(0, 10, (1, 3, 3)).expand(4, 3, 3)
    with torch.no_grad():
        logits = model(codes, torch.arange(4))
    for a, b in itertools.combinations(range(4), 2):
        assert not torch.allclose(logits[a], logits[b])
    samples = sample_codes(model, 4, labels=torch.arange(4), generator=torch.Generator())
    assert samples.shape == (4, 3, 3)


def test_bad_arguments_raise_value_error():
    unconditional = make_model(num_codes=10, height=2, width=4)
    conditional = make_model(num_codes=10, height=2, width=4, num_classes=3)
    codes = torch.zeros(2, 2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(codes, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="conditional"):
        conditional(codes)
    with pytest.raises(ValueError, match="labels must be"):
        conditional(codes, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="codes must be"):
        unconditional(torch.zeros(2, 4, 2, dtype=torch.long))
    for temperature in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            sample_codes(unconditional, 2, temperature=temperature)
    for top_k in (-1, 11):
        with pytest.raises(ValueError, match="top_k"):
            sample_codes(unconditional, 2, top_k=top_k)
    with pytest.raises(ValueError, match="conditional"):
        sample_codes(conditional, 2)
    with pytest.raises(ValueError):
        PixelCNNConfig(num_codes=0, height=2, width=4)


def test_config_json_round_trip():
    config = PixelCNNConfig(num_codes=256, height=7, width=7, hidden=32, num_classes=10)
    assert PixelCNNConfig.from_json(config.to_json()) == config
    assert config.covers_past
