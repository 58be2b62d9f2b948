import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from geovq.models.blocks import DecoderTrunk, EncoderTrunk
from geovq.models.vae import VAE, VAEConfig, kl_divergence


def test_flat_shapes():
    model = VAE(VAEConfig())
    mu, logvar = model.encode(torch.rand(3, 1, 28, 28))
    assert mu.shape == logvar.shape == (3, 32)
    assert model.decode(mu).shape == (3, 1, 28, 28)
    assert isinstance(model.encoder, EncoderTrunk) and isinstance(model.decoder, DecoderTrunk)


def test_spatial_latent_is_position_major():
    config = VAEConfig(latent="spatial", spatial_channels=4)
    assert config.total_latent_dim == 7 * 7 * 4 and config.latent_grid == (7, 7)
    model = VAE(config)
    images = torch.rand(2, 1, 28, 28)
    mu, _ = model.encode(images)
    assert mu.shape == (2, 196)
    maps = model.to_stats(model.encoder(images))[:, :4]  # (N, C, 7, 7) mu channels
    # Chunk p of the flat latent is the C values at position p = (row, col).
    assert torch.allclose(mu.view(2, 49, 4)[:, 7 * 2 + 3], maps[:, :, 2, 3])
    assert model.decode(mu).shape == (2, 1, 28, 28)


def test_rgb_32():
    model = VAE(VAEConfig(channels=3, height=32, width=32))
    mu, _ = model.encode(torch.rand(2, 3, 32, 32))
    assert model.decode(mu).shape == (2, 3, 32, 32)


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 8), torch.randn(5, 8)
    expected = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum() / 5
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)


def test_config_json_round_trip():
    config = VAEConfig(latent="spatial", spatial_channels=2)
    assert VAEConfig.from_json(config.to_json()) == config
