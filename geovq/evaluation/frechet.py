"""Fréchet distance of sample images to real ones, in the feature space of the run's classifier.

torchmetrics' FrechetInceptionDistance does the statistics (running sums of features and their
outer products, then d² = |mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a S_b)^½), Heusel et al. 2017);
our small classifier stands in for Inception, which knows nothing of 28×28 digits.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from geovq.models.classifier import SmallClassifier

FEATURE_BATCH = 512


class _Features(nn.Module):
    """Wraps a feature function for torchmetrics: (B, ...) -> (B, num_features) float64."""

    def __init__(self, features, num_features: int) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.features(inputs).double()


class _Identity(nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def _new_metric(extractor: nn.Module) -> FrechetInceptionDistance:
    # reset_real_features=False: the real statistics survive reset(), so one metric scores
    # many sample sets against the same real images.
    return FrechetInceptionDistance(feature=extractor, reset_real_features=False)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Squared Fréchet distance between Gaussians fitted to features (N_a, D) and (N_b, D)."""
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"{name} must be (N, D) with N >= 2, got {tuple(features.shape)}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature dims differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    metric = _new_metric(_Features(_Identity(), features_a.shape[1]))
    metric.update(features_b.detach().cpu().double(), real=True)
    metric.update(features_a.detach().cpu().double(), real=False)
    # The true value is >= 0; round-off can push identical distributions slightly below.
    return max(float(metric.compute()), 0.0)


class FrechetScorer:
    """FD of image sets (N, C, H, W) in [0, 1] to fixed real images, through a classifier's
    penultimate features. The real images' statistics are gathered once."""

    def __init__(self, classifier: SmallClassifier, real_images: torch.Tensor) -> None:
        device = next(classifier.parameters()).device
        self.device = device
        self.classifier = classifier.eval()
        extractor = _Features(classifier.features, classifier.config.feature_dim)
        self.metric = _new_metric(extractor).to(device)
        self._update(real_images, real=True)

    @torch.no_grad()
    def _update(self, images: torch.Tensor, real: bool) -> None:
        for chunk in images.split(FEATURE_BATCH):
            self.metric.update(chunk.to(self.device).float(), real=real)

    def score(self, images: torch.Tensor) -> float:
        """Squared Fréchet distance of these images' features to the real images' (lower is
        closer); needs at least two images."""
        if images.shape[0] < 2:
            raise ValueError(f"need at least 2 images to score, got {images.shape[0]}")
        self.metric.reset()
        self._update(images, real=False)
        return max(float(self.metric.compute()), 0.0)
