"""Evaluation as a library: pure functions from decoders, codes, latents and images to figures.

``reconstruction`` (MSE, PSNR, SSIM of decoded latents), ``prior_nll`` (a prior's bits per code
beside the uniform and unigram baselines), ``frechet`` (Fréchet distance of classifier
features), ``rates`` (nominal and prior rates, equal-rate pairs, rate–distortion points),
``budget`` (epochs and wall time that made a source) and ``sweep`` (codebooks at several K).
``geovq compare`` loads the run, calls these and renders the result.
"""

from geovq.evaluation.budget import training_budget
from geovq.evaluation.prior_nll import code_baselines, split_bits_per_code
from geovq.evaluation.rates import (
    RATES,
    equal_rate_pairs,
    family_of,
    method_of,
    pair_notes,
    prior_bits_per_image,
    rate_points,
    without_prior_rate,
)
from geovq.evaluation.reconstruction import (
    decode_images,
    decoded_mse,
    quantization_metrics,
    reconstruction_figures,
)
from geovq.evaluation.sweep import sweep_points

_LAZY = {"FrechetScorer", "frechet_distance"}  # torchmetrics' FID costs ~2 s to import


def __getattr__(name: str):
    """``frechet`` on first use: stages that only need rates or NLLs (train-prior in every
    torchrun rank) do not pay for importing torchmetrics."""
    if name in _LAZY:
        from geovq.evaluation import frechet

        return getattr(frechet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RATES",
    "FrechetScorer",
    "code_baselines",
    "decode_images",
    "decoded_mse",
    "equal_rate_pairs",
    "family_of",
    "method_of",
    "frechet_distance",
    "pair_notes",
    "prior_bits_per_image",
    "quantization_metrics",
    "rate_points",
    "reconstruction_figures",
    "split_bits_per_code",
    "sweep_points",
    "training_budget",
    "without_prior_rate",
]
