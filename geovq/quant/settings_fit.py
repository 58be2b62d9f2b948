"""The codebook fit ``quantize`` runs, from its settings: one function, so the stage and
``compare``'s K sweep fit alike."""

from __future__ import annotations

import torch

from geovq import GeovqError
from geovq.quant.codebook import QuantizerFit, fit_codebook
from geovq.settings import QuantizeSettings


def fit_from_settings(
    options: QuantizeSettings, mu: torch.Tensor, sigma: torch.Tensor, seed: int, **fit_options
) -> QuantizerFit:
    """Fit K = options.k codewords on chunk Gaussians mu, sigma (N, L, C) as options say;
    ``fit_options`` go to ``fit_codebook`` as they are (e.g. where to compute)."""
    try:
        return fit_codebook(
            mu,
            sigma,
            options.k,
            options.metric,
            per_position=options.codebook == "per-position",
            seed=seed,
            restarts=options.restarts,
            iters=options.iters,
            tol=options.tol,
            knn=options.knn,
            edge_weight=options.edge_weight,
            **fit_options,
        )
    except ValueError as error:
        raise GeovqError(str(error)) from None
