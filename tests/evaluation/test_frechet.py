import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from geovq.evaluation.frechet import FrechetScorer, frechet_distance
from geovq.models.classifier import ClassifierConfig, SmallClassifier


def direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|² + tr(S_a + S_b - 2 sqrtm(S_a S_b)) with scipy's sqrtm."""
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular covariances (ReLU features): sqrtm still usable
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        cross = scipy.linalg.sqrtm(ca @ cb).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * cross))


def test_frechet_matches_scipy_on_small_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (400, 3)), rng.normal(0.5, 2, (300, 3))
    value = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert value == pytest.approx(direct_frechet(a, b), rel=1e-6)


def test_frechet_of_a_set_with_itself_is_zero():
    features = torch.randn(200, 5, generator=torch.Generator().manual_seed(1))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_scorer_is_the_distance_of_classifier_features():
    """The image scorer = frechet_distance of the classifier's penultimate features, which is
    scipy's formula on them (ReLU features: singular covariances, as in practice)."""
    torch.manual_seed(0)
    classifier = SmallClassifier(ClassifierConfig(feature_dim=16)).eval()
    generator = torch.Generator().manual_seed(2)
    real = torch.rand(120, 1, 28, 28, generator=generator)
    fake = torch.rand(90, 1, 28, 28, generator=generator) ** 2
    with torch.no_grad():
        real_f, fake_f = classifier.features(real).double(), classifier.features(fake).double()
    scorer = FrechetScorer(classifier, real)
    assert scorer.score(fake) == pytest.approx(
        direct_frechet(fake_f.numpy(), real_f.numpy()), rel=1e-4
    )
    assert scorer.score(fake) == pytest.approx(frechet_distance(fake_f, real_f), rel=1e-6)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


def test_frechet_distance_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    mu_a, var_a = np.array([0.0, 1.0, -1.0]), np.array([1.0, 0.5, 2.0])
    mu_b, var_b = np.array([0.5, 1.0, 0.0]), np.array([2.0, 0.5, 0.25])
    a = mu_a + np.sqrt(var_a) * rng.standard_normal((200_000, 3))
    b = mu_b + np.sqrt(var_b) * rng.standard_normal((200_000, 3))
    expected = ((mu_a - mu_b) ** 2).sum() + (var_a + var_b - 2 * np.sqrt(var_a * var_b)).sum()
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        expected, abs=0.03
    )


def test_frechet_distance_matches_direct_computation_on_small_data():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 4))
    b = rng.standard_normal((30, 4)) + 0.3
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Symmetric form tr((S_a^1/2 S_b S_a^1/2)^1/2), equal to tr((S_a S_b)^1/2).
    root_a = scipy.linalg.sqrtm(cov_a).real
    cross = scipy.linalg.sqrtm(root_a @ cov_b @ root_a).real
    diff = a.mean(axis=0) - b.mean(axis=0)
    expected = diff @ diff + np.trace(cov_a + cov_b - 2 * cross)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(
        expected, rel=1e-6
    )


def test_frechet_distance_is_finite_for_singular_covariances():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 10))
    value = frechet_distance(torch.from_numpy(a), torch.from_numpy(a))
    assert math.isfinite(value)
    assert value == pytest.approx(0.0, abs=1e-3)
    assert math.isfinite(
        frechet_distance(torch.from_numpy(a), torch.randn(6, 10, dtype=torch.float64))
    )
