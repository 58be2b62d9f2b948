"""A prior's negative log-likelihood on a split's codes, beside the baselines it must beat:
uniform (log2 K bits per code) and unigram (the train split's code frequencies)."""

from __future__ import annotations

import math

import torch

from geovq.models.pixelcnn import GatedPixelCNN, code_nll_bits, unigram_bits

EVAL_BATCH = 1000


@torch.no_grad()
def split_bits_per_code(
    model: GatedPixelCNN,
    codes: torch.Tensor,
    labels: torch.Tensor | None,
    batch: int = EVAL_BATCH,
) -> float:
    """Total NLL (bits) of code grids (N, H, W) divided by their number of codes."""
    total = 0.0
    for start in range(0, codes.shape[0], batch):
        batch_labels = labels[start : start + batch] if labels is not None else None
        total += float(code_nll_bits(model, codes[start : start + batch], batch_labels).sum())
    return total / codes.numel()


def code_baselines(
    train_codes: torch.Tensor, test_codes: torch.Tensor, k: int, per_position: bool
) -> dict[str, float]:
    """Uniform and unigram bits per code of test codes (N, H, W) given train codes.

    With one codebook per position the unigram is fitted per position and averaged.
    """
    train, test = train_codes.cpu(), test_codes.cpu()
    if per_position:
        train_flat, test_flat = train.flatten(1), test.flatten(1)
        per_position_bits = [
            unigram_bits(train_flat[:, p], test_flat[:, p], k) for p in range(train_flat.shape[1])
        ]
        unigram = sum(per_position_bits) / len(per_position_bits)
    else:
        unigram = unigram_bits(train, test, k)
    return {"uniform_bits_per_code": math.log2(k), "unigram_bits_per_code": unigram}
