"""The codebook fit ``quantize`` runs, from its settings: one function, so the stage and
``compare``'s K sweep fit alike."""

from __future__ import annotations

import math

import torch

from geovq import GeovqError
from geovq.quant.codebook import QuantizerFit, fit_codebook
from geovq.settings import QuantizeSettings


def scalar_levels(q: QuantizeSettings, chunk_dim: int) -> tuple[int, ...]:
    """The scalar quantizer's levels per chunk dimension: --levels, else --k split evenly.

    K = L^C gives L levels each; a power of two K = 2^b gives each dimension b // C bits and
    the first b % C dimensions one more, so the scalar code spends the same bits as a K-word
    codebook.
    """
    if q.levels is not None:
        return q.levels
    even = round(q.k ** (1 / chunk_dim))
    if even**chunk_dim == q.k:
        return (even,) * chunk_dim
    bits = round(math.log2(q.k))
    if 2**bits != q.k:
        raise GeovqError(
            f"--k {q.k} is neither a power of two nor a {chunk_dim}-th power, so it cannot be "
            f"split over {chunk_dim} dimensions; pass --levels with {chunk_dim} counts"
        )
    return tuple(2 ** (bits // chunk_dim + (dim < bits % chunk_dim)) for dim in range(chunk_dim))


def codebook_size(q: QuantizeSettings, chunk_dim: int) -> int:
    """K: --k, or ∏ levels for scalar quantization."""
    return math.prod(scalar_levels(q, chunk_dim)) if q.metric == "scalar" else q.k


def fit_from_settings(
    options: QuantizeSettings, mu: torch.Tensor, sigma: torch.Tensor, seed: int, **fit_options
) -> QuantizerFit:
    """Fit codewords on chunk Gaussians mu, sigma (N, L, C) as options say (K = options.k, or
    the scalar levels); ``fit_options`` go to ``fit_codebook`` as they are (e.g. device)."""
    chunk_dim = mu.shape[-1]
    try:
        return fit_codebook(
            mu,
            sigma,
            codebook_size(options, chunk_dim),
            options.metric,
            per_position=options.codebook == "per-position",
            seed=seed,
            restarts=options.restarts,
            iters=options.iters,
            tol=options.tol,
            knn=options.knn,
            edge_weight=options.edge_weight,
            codeword=options.codeword,
            levels=scalar_levels(options, chunk_dim) if options.metric == "scalar" else None,
            **fit_options,
        )
    except ValueError as error:
        raise GeovqError(str(error)) from None
