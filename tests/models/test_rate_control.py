import math

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from geovq.models.rate_control import RateController, bits_to_nats
from geovq.models.vae import free_bits_kl, kl_divergence


def _train_linear_vae(controller: RateController, steps: int = 800) -> float:
    """A linear Gaussian VAE on 8-d data (scales 3 .. 0.1); returns the final full-data KL."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(math.log10(3), -1, 8)
    data = torch.randn(512, 8, generator=generator) * scales
    encoder, decoder = torch.nn.Linear(8, 8), torch.nn.Linear(4, 8)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for step in range(steps):
        batch = data[(step * 64) % 512 :][:64]
        mu, logvar = encoder(batch).chunk(2, dim=1)
        z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
        recon = 50 * (decoder(z) - batch).pow(2).sum(1).mean()
        kl = kl_divergence(mu, logvar)
        loss = recon + controller.beta * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        controller.update(float(kl.detach()))
    with torch.no_grad():
        mu, logvar = encoder(data).chunk(2, dim=1)
        return float(kl_divergence(mu, logvar))


@pytest.mark.parametrize("target_bits", [4.0, 12.0])
def test_controller_drives_the_kl_to_the_target(target_bits):
    target = bits_to_nats(target_bits)
    controller = RateController(target, beta=1.0, gain=0.05)
    kl = _train_linear_vae(controller)
    assert kl == pytest.approx(target, rel=0.1)


def test_controller_moves_beta_the_right_way_and_saves_its_state():
    controller = RateController(10.0, beta=1.0, gain=0.1, momentum=0.0)
    assert controller.update(5.0) == pytest.approx(math.exp(-0.05))  # short of target: beta falls
    assert controller.update(40.0) == pytest.approx(math.exp(-0.05 + 0.1))  # error clipped to 1
    copy = RateController(10.0)
    copy.restore(controller.state())
    assert (copy.beta, copy.kl_ema) == (controller.beta, controller.kl_ema)


def test_bad_targets_are_rejected():
    with pytest.raises(ValueError, match="target rate"):
        RateController(0.0)


def test_free_bits_floor_per_dimension():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=generator)
    logvar = torch.randn(6, 5, generator=generator)
    per_dim = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    floor = float(per_dim.median())
    expected = torch.where(per_dim < floor, floor, per_dim).sum()
    assert torch.allclose(free_bits_kl(mu, logvar, floor), expected, atol=1e-5)
    assert torch.allclose(free_bits_kl(mu, logvar, 0.0), kl_divergence(mu, logvar), atol=1e-5)


def _train_linear_vae_chunked(controller, steps: int = 800) -> torch.Tensor:
    """The linear VAE above with its 4 latent dims in 2 chunks of 2, under one β per the
    controller's chunks; returns the full-data KL of each 2-dim chunk (nats)."""
    from geovq.models.vae import kl_per_dim

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(math.log10(3), -1, 8)
    data = torch.randn(512, 8, generator=generator) * scales
    encoder, decoder = torch.nn.Linear(8, 8), torch.nn.Linear(4, 8)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for step in range(steps):
        batch = data[(step * 64) % 512 :][:64]
        mu, logvar = encoder(batch).chunk(2, dim=1)
        z = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
        recon = 50 * (decoder(z) - batch).pow(2).sum(1).mean()
        per_chunk = kl_per_dim(mu, logvar).reshape(controller.chunks, -1).sum(1)
        loss = recon + (controller.betas.float() * per_chunk).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        controller.update(per_chunk.detach())
    with torch.no_grad():
        mu, logvar = encoder(data).chunk(2, dim=1)
        return kl_per_dim(mu, logvar).reshape(2, 2).sum(1)


def test_chunk_controller_gives_every_chunk_its_share():
    """Whole-latent control lets the KL pile up unevenly; one β per chunk holds each chunk at
    target / chunks (the linear VAE's data has scales 3 .. 0.1, so its chunks differ a lot)."""
    from geovq.models.rate_control import ChunkRateController

    target = bits_to_nats(12.0)
    uneven = _train_linear_vae_chunked(ChunkRateController(target, chunks=1))
    assert float(uneven.sum()) == pytest.approx(target, rel=0.1)
    assert float(uneven.max() / uneven.min()) > 1.5  # the natural split is uneven
    even = _train_linear_vae_chunked(ChunkRateController(target, chunks=2))
    assert even.tolist() == pytest.approx([target / 2] * 2, rel=0.1)


def test_one_chunk_is_the_plain_controller_and_state_round_trips():
    from geovq.models.rate_control import ChunkRateController

    plain = RateController(10.0, beta=2.0, gain=0.1)
    one = ChunkRateController(10.0, chunks=1, beta_start=2.0, gain=0.1)
    for kl in (3.0, 25.0, 9.0, 14.0, 40.0):
        plain.update(kl)
        one.update(torch.tensor([kl]))
    assert one.beta == pytest.approx(plain.beta, rel=1e-12)
    several = ChunkRateController(10.0, chunks=3, beta_start=1.0, gain=0.1)
    several.update(torch.tensor([1.0, 3.0, 9.0]))
    copy = ChunkRateController(10.0, chunks=3)
    copy.restore(several.state())
    assert torch.equal(copy.betas, several.betas) and torch.equal(copy.kl_emas, several.kl_emas)
    with pytest.raises(ValueError, match="3 chunks"):
        several.update(torch.tensor([1.0, 2.0]))
