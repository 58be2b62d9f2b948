import math
import threading

import pytest
import torch
import torch.nn.functional as F

from geovq.models.blocks import DecoderTrunk, EncoderTrunk
from geovq.models.vae import VAE, VAEConfig
from geovq.models.vqvae import VQVAE, VectorQuantizer, VQVAEConfig, validate_config, vqvae_loss


def _images(n: int, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator)


def _spread_codebook(model: VQVAE, images: torch.Tensor) -> None:
    """Seed the codebook with distinct encoder outputs so codes are not all the same."""
    z_e = model.encode(images).detach().reshape(-1, model.config.codebook_dim)
    generator = torch.Generator().manual_seed(1)
    rows = torch.randperm(z_e.shape[0], generator=generator)[: model.config.k]
    model.quantizer.init_codebook(z_e[rows])


# --- config -------------------------------------------------------------------------------


def test_config_json_round_trip_and_rates():
    config = VQVAEConfig(grid_h=2, grid_w=4, k=256, codebook_update="ema", dead_code_restart=5)
    assert VQVAEConfig.from_json(config.to_json()) == config
    assert config.positions == 8
    assert config.bits_per_image == pytest.approx(8 * 8.0)
    assert VQVAEConfig(k=512).bits_per_image == pytest.approx(49 * math.log2(512))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grid_h": 14, "grid_w": 14}, "grid 14x14"),
        ({"grid_h": 8, "grid_w": 8}, "grid 8x8"),
        ({"grid_h": 0, "grid_w": 4}, "grid 0x4"),
        ({"grid_h": 2, "grid_w": 0}, "grid 2x0"),
        ({"k": 0}, "k must be >= 1"),
        ({"codebook_dim": 0}, "codebook_dim"),
        ({"codebook_update": "kmeans"}, "unknown codebook_update 'kmeans'"),
        ({"ema_decay": 0.0}, "ema_decay"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"dead_code_restart": -1}, "dead_code_restart"),
        ({"beta": -0.5}, "beta"),
        ({"height": 2, "width": 2, "grid_h": 1, "grid_w": 1}, "too small"),
    ],
)
def test_bad_configs_raise(fields, message):
    config = VQVAEConfig(**fields)
    with pytest.raises(ValueError, match=message):
        validate_config(config)
    with pytest.raises(ValueError, match=message):
        VQVAE(config)


def test_bad_grid_message_names_allowed_grids():
    with pytest.raises(ValueError, match=r"7x7 feature map .* 1 <= H <= 7 and 1 <= W <= 7"):
        validate_config(VQVAEConfig(grid_h=14, grid_w=14))


def test_good_configs_pass():
    validate_config(VQVAEConfig())
    validate_config(VQVAEConfig(grid_h=2, grid_w=4))
    validate_config(VQVAEConfig(channels=3, height=32, width=32, grid_h=8, grid_w=8))
    validate_config(VQVAEConfig(grid_h=1, grid_w=7, codebook_update="ema", dead_code_restart=3))


# --- model shapes and trunks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "grid", "conv"),
    [(1, 28, (7, 7), True), (1, 28, (2, 4), False), (3, 32, (8, 8), True), (3, 32, (2, 4), False)],
)
def test_code_and_logit_shapes(channels, size, grid, conv):
    config = VQVAEConfig(
        channels=channels, height=size, width=size, grid_h=grid[0], grid_w=grid[1], k=16
    )
    model = VQVAE(config, seed=0)
    images = _images(3, channels, size)
    assert model.config.uses_conv_projection is conv
    assert model.encode(images).shape == (3, grid[0] * grid[1], 4)
    codes = model.codes_for(images)
    assert codes.shape == (3, *grid)
    assert codes.dtype == torch.int64
    logits, forward_codes, losses = model(images)
    assert logits.shape == images.shape
    assert torch.equal(forward_codes, codes)
    assert set(losses) == {"codebook", "commitment"}
    assert model.decode_codes(codes).shape == images.shape


def test_uses_the_vae_trunk_classes():
    model = VQVAE(VQVAEConfig(), seed=0)
    vae = VAE(VAEConfig())
    assert isinstance(model.encoder, EncoderTrunk)
    assert isinstance(model.decoder, DecoderTrunk)
    assert type(model.encoder) is type(vae.encoder)
    assert type(model.decoder) is type(vae.decoder)


def test_conv_grid_positions_are_raster_order_in_encode_and_decode():
    model = VQVAE(VQVAEConfig(k=8), seed=0)
    images = _images(2)
    z_e = model.encode(images)
    maps = model.to_latents(model.encoder(images))  # (N, C, 7, 7)
    latents = torch.randn(2, 49, 4, generator=torch.Generator().manual_seed(2))
    latent_maps = torch.zeros(2, 4, 7, 7)
    for i in range(7):
        for j in range(7):
            torch.testing.assert_close(z_e[:, i * 7 + j], maps[:, :, i, j])
            latent_maps[:, :, i, j] = latents[:, i * 7 + j]
    expected = model.decoder(torch.relu(model.from_latents(latent_maps)))
    torch.testing.assert_close(model.decode_latents(latents), expected)


def test_linear_grid_splits_into_contiguous_chunks():
    model = VQVAE(VQVAEConfig(grid_h=2, grid_w=4, k=8), seed=0)
    images = _images(2)
    flat = model.to_latents(model.encoder(images).flatten(1))  # (N, 8 * 4)
    z_e = model.encode(images)
    for position in range(8):
        torch.testing.assert_close(z_e[:, position], flat[:, 4 * position : 4 * position + 4])


def test_decode_codes_matches_forward_logits():
    model = VQVAE(VQVAEConfig(grid_h=2, grid_w=4, k=8), seed=0).eval()
    images = _images(4)
    _spread_codebook(model, images)
    logits, codes, _ = model(images)
    torch.testing.assert_close(model.decode_codes(codes), logits)


# --- quantization ---------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(7, 7), (2, 4)])
def test_codes_for_is_float64_brute_force_argmin(grid):
    model = VQVAE(VQVAEConfig(grid_h=grid[0], grid_w=grid[1], k=8), seed=0)
    images = _images(6)
    _spread_codebook(model, images[:3])
    # Brute force: every (point, codeword) squared distance in float64.
    z_e = model.encode(images).detach().reshape(-1, 4).double()
    codebook = model.quantizer.codebook.double()
    sq_distances = ((z_e[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    expected = sq_distances.argmin(1).view(6, *grid)
    codes = model.codes_for(images)
    assert torch.equal(codes, expected)
    assert codes.unique().numel() > 1


def test_quantizer_output_is_nearest_codeword_with_unweighted_losses():
    quantizer = VectorQuantizer(4, 2, seed=0).eval()
    quantizer.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]))
    z_e = torch.tensor([[0.1, 0.2], [0.9, -0.1], [2.5, 3.5]])
    z_q, codes, losses = quantizer(z_e)
    assert codes.tolist() == [0, 1, 3]
    expected_q = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 3.0]])
    torch.testing.assert_close(z_q, expected_q)
    expected_sq = torch.tensor([0.05, 0.02, 0.5]).mean()
    torch.testing.assert_close(losses["commitment"], expected_sq)
    torch.testing.assert_close(losses["codebook"], expected_sq)


def test_loss_mode_codebook_loss_trains_only_the_codebook():
    quantizer = VectorQuantizer(3, 2, seed=0)
    quantizer.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    z_e = torch.tensor([[0.2, 0.1], [1.1, 0.8]], requires_grad=True)
    _, _, losses = quantizer(z_e)
    losses["codebook"].backward()
    assert z_e.grad is None or torch.all(z_e.grad == 0)
    grad = quantizer.embedding.grad
    # d/de mean ||sg[z] - e||^2 = 2 (e - z) / M for used rows, zero for the unused one.
    expected = torch.tensor([[-0.2, -0.1], [-0.1, 0.2], [0.0, 0.0]])
    torch.testing.assert_close(grad, expected)


def test_straight_through_gradient_reaches_the_encoder():
    model = VQVAE(VQVAEConfig(grid_h=2, grid_w=4, k=8), seed=0)
    images = _images(4)
    logits, _, _ = model(images)
    recon = F.binary_cross_entropy_with_logits(logits, images, reduction="sum")
    recon.backward()
    for name, parameter in [
        *model.encoder.named_parameters(),
        *model.to_latents.named_parameters(),
    ]:
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    # The reconstruction loss alone does not move the codebook: its only path is straight-through.
    assert model.quantizer.embedding.grad is None


def test_straight_through_value_equals_quantized_and_gradient_is_identity():
    quantizer = VectorQuantizer(3, 2, seed=0)
    quantizer.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    z_e = torch.tensor([[0.2, 0.1], [4.0, 4.5]], requires_grad=True)
    z_q, _, _ = quantizer(z_e)
    torch.testing.assert_close(z_q, torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z_e.grad, weights)


# --- EMA ------------------------------------------------------------------------------------


def test_ema_update_matches_hand_computation():
    decay, eps = 0.9, 1e-5
    start = [[0.0, 0.0], [1.0, 1.0], [4.0, 0.0]]
    points = [[0.1, -0.2], [0.3, 0.1], [0.8, 1.3], [-0.1, 0.0], [1.2, 0.9]]
    quantizer = VectorQuantizer(3, 2, update="ema", ema_decay=decay, seed=0).train()
    quantizer.init_codebook(torch.tensor(start))
    assert torch.equal(quantizer.cluster_size, torch.ones(3))
    assert torch.equal(quantizer.embed_sum, torch.tensor(start))
    # A nearly empty, unused cluster 2 makes the Laplace smoothing matter (about 10% here).
    start_counts = [1.0, 2.0, 1e-4]
    start_sums = [[start[i][d] * start_counts[i] for d in range(2)] for i in range(3)]
    quantizer.cluster_size.copy_(torch.tensor(start_counts))
    quantizer.embed_sum.copy_(torch.tensor(start_sums))
    _, codes, losses = quantizer(torch.tensor(points))

    # Independent computation with Python floats: nearest codeword, then the EMA formulas.
    def nearest(p):
        return min(range(3), key=lambda i: sum((p[d] - start[i][d]) ** 2 for d in range(2)))

    assigned = [nearest(p) for p in points]
    assert assigned == [0, 0, 1, 0, 1]
    assert codes.tolist() == assigned
    counts = [sum(1 for a in assigned if a == i) for i in range(3)]
    sums = [
        [sum(p[d] for p, a in zip(points, assigned, strict=True) if a == i) for d in range(2)]
        for i in range(3)
    ]
    cluster = [decay * start_counts[i] + (1 - decay) * counts[i] for i in range(3)]
    embed_sum = [
        [decay * start_sums[i][d] + (1 - decay) * sums[i][d] for d in range(2)] for i in range(3)
    ]
    n = sum(cluster)
    smoothed = [(cluster[i] + eps) / (n + 3 * eps) * n for i in range(3)]
    codebook = [[embed_sum[i][d] / smoothed[i] for d in range(2)] for i in range(3)]

    torch.testing.assert_close(quantizer.cluster_size, torch.tensor(cluster))
    torch.testing.assert_close(quantizer.embed_sum, torch.tensor(embed_sum))
    torch.testing.assert_close(quantizer.codebook, torch.tensor(codebook))
    assert float(losses["codebook"]) == 0.0
    assert not any(p is quantizer.embedding for p in quantizer.parameters())


def test_ema_does_not_update_in_eval_mode():
    quantizer = VectorQuantizer(3, 2, update="ema", seed=0).eval()
    quantizer.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 1.0], [4.0, 0.0]]))
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    quantizer(torch.tensor([[0.3, 0.1], [0.8, 1.3]]))
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_codes_for_does_not_update_ema_in_training_mode():
    model = VQVAE(VQVAEConfig(grid_h=2, grid_w=4, k=8, codebook_update="ema"), seed=0)
    before = model.quantizer.codebook.clone()
    model.train().codes_for(_images(4))
    assert torch.equal(model.quantizer.codebook, before)
    model(_images(4))
    assert not torch.equal(model.quantizer.codebook, before)


# --- dead-code restart ----------------------------------------------------------------------


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_dead_code_restart_revives_an_unused_codeword(update):
    quantizer = VectorQuantizer(3, 2, update=update, dead_code_restart=3, seed=0).train()
    quantizer.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]))
    z_e = torch.tensor([[0.1, -0.2], [0.3, 0.1], [0.8, 1.3], [1.2, 0.9]])
    for _ in range(2):
        _, codes, _ = quantizer(z_e)
        assert 2 not in codes.tolist()
        # EMA smoothing nudges an unused codeword; it must still be far from the batch.
        assert quantizer.codebook[2].min() > 90
    quantizer(z_e)  # third unused step: re-seeded from this batch
    revived = quantizer.codebook[2]
    assert any(torch.equal(revived, row) for row in z_e)
    _, codes, _ = quantizer(z_e)
    assert 2 in codes.tolist()


def test_codeword_used_every_other_step_is_not_restarted():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    quantizer = VectorQuantizer(2, 2, dead_code_restart=2, seed=0).train()
    quantizer.init_codebook(codebook)
    batches = [torch.tensor([[0.1, 0.0]]), torch.tensor([[10.0, 10.1]])]
    for step in range(6):
        quantizer(batches[step % 2])
    assert torch.equal(quantizer.codebook, codebook)


def test_dead_code_restart_disabled_and_in_eval_mode():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])
    z_e = torch.tensor([[0.1, -0.2], [0.8, 1.3]])
    disabled = VectorQuantizer(3, 2, dead_code_restart=0, seed=0).train()
    evaluating = VectorQuantizer(3, 2, dead_code_restart=1, seed=0).eval()
    for quantizer in (disabled, evaluating):
        quantizer.init_codebook(codebook)
        for _ in range(3):
            quantizer(z_e)
        assert torch.equal(quantizer.codebook, codebook)


# --- a batch split over processes -----------------------------------------------------------


class _TwoProcesses:
    """Two quantizers in two threads standing in for two torchrun ranks: ``sum`` and
    ``first`` exchange their tensors at a barrier, as an all-reduce and a broadcast would."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)
        self.slots: list[torch.Tensor | None] = [None, None]

    def hooks(self, rank: int):
        def exchange(tensor: torch.Tensor) -> list[torch.Tensor]:
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            both = list(self.slots)
            self.barrier.wait()
            return both

        def sum_shards(tensor: torch.Tensor) -> torch.Tensor:
            mine, other = exchange(tensor)
            return mine + other

        def first_shard(tensor: torch.Tensor) -> torch.Tensor:
            return exchange(tensor)[0]

        return sum_shards, first_shard


def _shard_steps(quantizers: list[VectorQuantizer], batches: list[torch.Tensor]) -> None:
    """Each quantizer trains on its rank's rows (every other one) of every batch, in a thread."""

    def work(rank: int) -> None:
        for z_e in batches:
            quantizers[rank](z_e[rank::2])

    threads = [threading.Thread(target=work, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


@pytest.mark.parametrize("restart", [0, 2])
def test_shared_statistics_train_the_codebook_like_one_process(restart):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 3, generator=generator) * 2 for _ in range(6)]
    start = torch.randn(8, 3, generator=generator)
    start[0] = 1000.0  # never used: restarted when restarts are on
    whole, *shards = (
        VectorQuantizer(8, 3, update="ema", dead_code_restart=restart, seed=0).train()
        for _ in range(3)
    )
    processes = _TwoProcesses()
    for rank, quantizer in enumerate(shards):
        quantizer.init_codebook(start)
        quantizer.share_statistics(*processes.hooks(rank))
    whole.init_codebook(start)
    for z_e in batches:
        whole(z_e)
    _shard_steps(shards, batches)

    for name, tensor in shards[0].state_dict().items():  # the two ranks agree exactly
        assert torch.equal(tensor, shards[1].state_dict()[name]), name
    if restart:  # restart seeds come from rank 0's rows, not the whole batch's
        assert float(shards[0].codebook[0].abs().max()) < 100
        assert float(whole.codebook[0].abs().max()) < 100
        return
    for name in ("embedding", "cluster_size", "embed_sum", "steps_unused"):
        torch.testing.assert_close(getattr(shards[0], name), getattr(whole, name))
    assert float(whole.codebook[0].abs().max()) > 100  # unused, and never restarted


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_same_init_and_codes():
    config = VQVAEConfig(grid_h=2, grid_w=4, k=8)
    images = _images(4)
    first, second, other = (VQVAE(config, seed=s) for s in (3, 3, 4))
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.quantizer.codebook, other.quantizer.codebook)
    assert torch.equal(first.codes_for(images), second.codes_for(images))


def test_seeded_build_leaves_global_rng_alone_and_unseeded_follows_it():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    VQVAE(VQVAEConfig(k=8), seed=0)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(5)
    first = VQVAE(VQVAEConfig(k=8))
    torch.manual_seed(5)
    second = VQVAE(VQVAEConfig(k=8))
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


def test_dead_code_restarts_are_deterministic_per_seed():
    z_e = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    revived = []
    for seed in (7, 7):
        quantizer = VectorQuantizer(4, 2, dead_code_restart=1, seed=seed).train()
        quantizer.init_codebook(torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]]))
        quantizer(z_e)
        revived.append(quantizer.codebook.clone())
    assert torch.equal(revived[0], revived[1])


# --- loss -----------------------------------------------------------------------------------


def test_vqvae_loss_combines_terms():
    images = _images(2, size=8)
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    losses = {"codebook": torch.tensor(1.5), "commitment": torch.tensor(2.0)}
    total, terms = vqvae_loss(logits, images, losses, beta=0.25)
    bce = F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / 2
    torch.testing.assert_close(total, bce + 1.5 + 0.5)
    assert terms["recon"] == pytest.approx(float(bce))
    assert terms["total"] == pytest.approx(float(bce) + 2.0)
    assert terms["codebook"] == 1.5 and terms["commitment"] == 2.0
    total_mse, terms_mse = vqvae_loss(logits, images, losses, beta=0.25, recon="mse")
    mse = ((torch.sigmoid(logits) - images) ** 2).sum() / 2
    torch.testing.assert_close(total_mse, mse + 2.0)
    assert terms_mse["recon"] == pytest.approx(float(mse))
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        vqvae_loss(logits, images, losses, beta=0.25, recon="l1")


def test_model_losses_are_per_image_sums_over_positions():
    model = VQVAE(VQVAEConfig(grid_h=2, grid_w=4, k=8), seed=0).eval()
    images = _images(3)
    _spread_codebook(model, images)
    _, codes, losses = model(images)
    z_e = model.encode(images).detach()
    z_q = model.quantizer.codebook[codes.view(3, -1)]
    expected = ((z_e - z_q) ** 2).sum(dim=(1, 2)).mean()
    torch.testing.assert_close(losses["commitment"], expected)
    torch.testing.assert_close(losses["codebook"], expected)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_quantizer_runs_in_float32_under_bf16_autocast(update):
    # training on a GPU autocasts to bf16; EMA sums and code ranking must stay float32
    quantizer = VectorQuantizer(16, 4, update=update).train()
    z_e = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    expected = quantizer.assign_codes(z_e.bfloat16().float())  # before the update moves it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, codes, losses = quantizer(z_e.bfloat16())
    assert z_q.dtype == torch.float32 and losses["commitment"].dtype == torch.float32
    assert torch.equal(codes, expected)
