import pytest
import torch

from geovq.models.classifier import (
    ClassifierConfig,
    SmallClassifier,
    accuracy,
    extract_features,
    train_classifier,
)

CONFIG = ClassifierConfig(channels=1, height=28, width=28, num_classes=4, feature_dim=32)


def quadrant_dataset(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose label is the quadrant (0-3) that is bright."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    images = 0.2 * torch.rand(count, 1, 28, 28, generator=generator)
    for index, label in enumerate(labels.tolist()):
        top, left = 14 * (label // 2), 14 * (label % 2)
        images[index, 0, top : top + 14, left : left + 14] += 0.6
    return images.clamp(0, 1), labels


def test_config_json_round_trip():
    assert ClassifierConfig.from_json(CONFIG.to_json()) == CONFIG


@pytest.mark.parametrize("size", [(28, 28), (32, 32)])
def test_shapes(size):
    config = ClassifierConfig(channels=3, height=size[0], width=size[1], feature_dim=16)
    model = SmallClassifier(config)
    batch = torch.rand(5, 3, *size)
    assert model(batch).shape == (5, 10)
    assert model.features(batch).shape == (5, 16)
    assert extract_features(model, batch, batch_size=2).shape == (5, 16)


def test_learns_separable_quadrants():
    train_images, train_labels = quadrant_dataset(256, seed=0)
    test_images, test_labels = quadrant_dataset(256, seed=1)
    model = train_classifier(train_images, train_labels, CONFIG, epochs=2, batch_size=32)
    assert accuracy(model, test_images, test_labels, batch_size=100) > 0.9


def test_training_is_deterministic_for_a_seed():
    images, labels = quadrant_dataset(64, seed=2)
    state = torch.random.get_rng_state()
    first = train_classifier(images, labels, CONFIG, epochs=1, batch_size=32, seed=5)
    # The caller's global RNG is left untouched.
    assert torch.equal(torch.random.get_rng_state(), state)
    second = train_classifier(images, labels, CONFIG, epochs=1, batch_size=32, seed=5)
    other = train_classifier(images, labels, CONFIG, epochs=1, batch_size=32, seed=6)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name])
    assert not torch.equal(first.head.weight, other.head.weight)


def test_extract_features_matches_features_and_keeps_mode():
    model = SmallClassifier(CONFIG)
    model.train()
    images, _ = quadrant_dataset(10, seed=3)
    features = extract_features(model, images, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(features, model.features(images))
    assert model.training


def test_rejects_bad_inputs():
    images, labels = quadrant_dataset(8, seed=4)
    with pytest.raises(ValueError):
        train_classifier(images[:, :, :20], labels, CONFIG)
    with pytest.raises(ValueError):
        train_classifier(images, labels[:5], CONFIG)
    with pytest.raises(ValueError):
        train_classifier(images, labels + 4, CONFIG)
    with pytest.raises(ValueError):
        accuracy(SmallClassifier(CONFIG), images, labels[:3])
