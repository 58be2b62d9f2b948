import math

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from geovq.models.rate_control import RateController, bits_to_nats
from geovq.models.vae import free_bits_kl, kl_divergence, kl_per_dim


def _train_linear_vae(
    controller: RateController, steps: int = 800, report_chunks: int | None = None
) -> torch.Tensor:
    """A linear Gaussian VAE on 8-d data (scales 3 .. 0.1) with 4 latent dims, one β per the
    controller's chunks; returns the final full-data KL of each of ``report_chunks`` chunks
    (default: the controller's), nats."""
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
        return kl_per_dim(mu, logvar).reshape(report_chunks or controller.chunks, -1).sum(1)


@pytest.mark.parametrize("target_bits", [4.0, 12.0])
def test_controller_drives_the_kl_to_the_target(target_bits):
    target = bits_to_nats(target_bits)
    controller = RateController(target, beta=1.0, gain=0.05)
    kl = float(_train_linear_vae(controller).sum())
    assert kl == pytest.approx(target, rel=0.1)


def test_controller_moves_beta_the_right_way_and_saves_its_state():
    controller = RateController(10.0, beta=1.0, gain=0.1, momentum=0.0)
    controller.update(5.0)  # short of the target: beta falls
    assert controller.beta == pytest.approx(math.exp(-0.05))
    controller.update(40.0)  # past it, the error clipped to 1
    assert controller.beta == pytest.approx(math.exp(-0.05 + 0.1))
    copy = RateController(10.0)
    copy.restore(controller.state())
    assert copy.beta == controller.beta and torch.equal(copy.kl_emas, controller.kl_emas)


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


def test_chunk_controller_gives_every_chunk_its_share():
    """Whole-latent control lets the KL pile up unevenly; one β per chunk holds each chunk at
    target / chunks (the linear VAE's data has scales 3 .. 0.1, so its chunks differ a lot)."""
    target = bits_to_nats(12.0)
    uneven = _train_linear_vae(RateController(target, chunks=1), report_chunks=2)
    assert float(uneven.sum()) == pytest.approx(target, rel=0.1)
    assert float(uneven.max() / uneven.min()) > 1.5
    even = _train_linear_vae(RateController(target, chunks=2))
    assert even.tolist() == pytest.approx([target / 2] * 2, rel=0.1)


def test_chunk_state_round_trips():
    several = RateController(10.0, chunks=3, beta=1.0, gain=0.1)
    several.update(torch.tensor([1.0, 3.0, 9.0]))
    copy = RateController(10.0, chunks=3)
    copy.restore(several.state())
    assert torch.equal(copy.betas, several.betas) and torch.equal(copy.kl_emas, several.kl_emas)
    with pytest.raises(ValueError, match="3 chunks"):
        several.update(torch.tensor([1.0, 2.0]))
