"""A small CNN classifier whose accuracy and penultimate features score generated samples.

Accuracy on real test images checks the classifier; its features of samples vs real images
give a Fréchet distance (FID-style, with this classifier standing in for Inception).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a SmallClassifier; stored as JSON next to its weights."""

    channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10
    feature_dim: int = 128

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        return cls(**json.loads(text))


class SmallClassifier(nn.Module):
    """Images (N, C, H, W) in [0, 1] -> (N, feature_dim) features -> (N, num_classes) logits.

    Two 3x3 conv + 2x2 max-pool stages (C -> 32 -> 64, H/4 x W/4) and a linear feature layer.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        pooled = (config.height // 4) * (config.width // 4)
        self.trunk = nn.Sequential(
            nn.Conv2d(config.channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * pooled, config.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, feature_dim) penultimate activations."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: ClassifierConfig,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> SmallClassifier:
    """Adam on cross-entropy over images (N, C, H, W) in [0, 1] and int labels (N,).

    Deterministic for a seed: the initial weights come from a forked global RNG seeded with it
    (the caller's RNG state is left untouched) and shuffling uses its own torch.Generator.
    """
    _check_inputs(images, labels, config)
    labels = labels.long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallClassifier(config).to(images.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        for batch in order.split(batch_size):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def accuracy(
    model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> float:
    """Share of images (N, C, H, W) whose argmax logit equals labels (N,), over the whole set."""
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need as many labels as images (> 0), got {labels.shape[0]}")
    logits = _batched(model, model.forward, images, batch_size)
    correct = (logits.argmax(dim=1) == labels.to(logits.device)).sum().item()
    return correct / images.shape[0]


def extract_features(
    model: SmallClassifier, images: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """(N, C, H, W) images -> (N, feature_dim) penultimate features, without gradients."""
    return _batched(model, model.features, images, batch_size)


def _batched(
    model: nn.Module,
    function: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """Apply function chunk by chunk in eval mode, restoring the model's previous mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = [function(chunk) for chunk in images.split(batch_size)]
    model.train(was_training)
    return torch.cat(outputs)


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig) -> None:
    expected = (config.channels, config.height, config.width)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        channels, height, width = expected
        raise ValueError(
            f"images must be (N, {channels}, {height}, {width}), got {tuple(images.shape)}"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no training images")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"labels must lie in [0, {config.num_classes})")
