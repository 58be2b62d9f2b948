import pytest
import torch

from geovq.models.blocks import (
    TRUNK_CHANNELS,
    TRUNKS,
    ResidualBlock,
    decoder_trunk,
    encoder_trunk,
)
from geovq.models.vae import VAE, VAEConfig
from geovq.models.vqvae import VQVAE, VQVAEConfig


@pytest.mark.parametrize("kind", TRUNKS)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 64)])
def test_trunk_shapes(kind, channels, size):
    encoder, decoder = encoder_trunk(kind, channels), decoder_trunk(kind, channels)
    features = encoder(torch.rand(2, channels, size, size))
    assert features.shape == (2, TRUNK_CHANNELS, size // 4, size // 4)
    assert decoder(features).shape == (2, channels, size, size)


def test_residual_block_is_identity_plus_its_branch():
    block = ResidualBlock()
    features = torch.randn(2, TRUNK_CHANNELS, 3, 3)
    branch = block.net[3](torch.relu(block.net[1](torch.relu(features))))
    torch.testing.assert_close(block(features), features + branch)


def test_residual_trunk_has_more_capacity_than_the_reference():
    sizes = {kind: sum(p.numel() for p in encoder_trunk(kind, 3).parameters()) for kind in TRUNKS}
    assert sizes["residual"] > sizes["reference"]


@pytest.mark.parametrize("kind", TRUNKS)
def test_vae_and_vqvae_get_the_same_trunk_classes(kind):
    vae = VAE(VAEConfig(channels=3, height=32, width=32, trunk=kind))
    vqvae = VQVAE(VQVAEConfig(channels=3, height=32, width=32, grid_h=8, grid_w=8, trunk=kind))
    assert type(vae.encoder) is type(vqvae.encoder) is type(encoder_trunk(kind, 3))
    assert type(vae.decoder) is type(vqvae.decoder) is type(decoder_trunk(kind, 3))
    images = torch.rand(2, 3, 32, 32)
    assert vae(images)[0].shape == images.shape and vqvae(images)[0].shape == images.shape


def test_unknown_trunk():
    with pytest.raises(ValueError, match="unknown trunk 'dense'"):
        encoder_trunk("dense", 1)
    with pytest.raises(ValueError, match="unknown trunk 'dense'"):
        VQVAE(VQVAEConfig(trunk="dense"))


def test_old_configs_without_a_trunk_read_as_reference():
    text = VAEConfig().to_json().replace(', "trunk": "reference"', "")
    assert "trunk" not in text and VAEConfig.from_json(text).trunk == "reference"
