import math

import numpy as np
import pytest
import torch

from geovq.evaluation.prior_nll import code_baselines, split_bits_per_code
from geovq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig


def test_unigram_baseline_by_hand():
    train = torch.tensor([[[0, 0], [1, 2]]] * 3)
    test = torch.tensor([[[0, 1], [1, 3]]])
    counts = np.bincount(train.flatten().numpy(), minlength=4) + 1.0
    probs = counts / counts.sum()
    by_hand = -np.mean(np.log2(probs[test.flatten().numpy()]))
    figures = code_baselines(train, test, 4, per_position=False)
    assert figures["unigram_bits_per_code"] == pytest.approx(by_hand)
    assert figures["uniform_bits_per_code"] == 2.0


def test_split_bits_per_code_is_total_nll_over_codes():
    torch.manual_seed(0)
    model = GatedPixelCNN(PixelCNNConfig(num_codes=5, height=2, width=3, hidden=8, layers=2))
    model.eval()
    codes = torch.randint(0, 5, (7, 2, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        log_probs = torch.log_softmax(model(codes), dim=1)
    nll = -log_probs.gather(1, codes.unsqueeze(1)).sum() / math.log(2)
    for batch in (2, 100):
        bits = split_bits_per_code(model, codes, None, batch=batch)
        assert bits == pytest.approx(float(nll) / codes.numel(), rel=1e-5)


def test_prior_bits_per_image_is_the_nll_summed_over_positions():
    """compare's prior rate (bits per code × positions) against a per-image, per-position sum
    of -log2 p(code) from the softmax of the logits of each image alone."""
    torch.manual_seed(1)
    model = GatedPixelCNN(PixelCNNConfig(num_codes=6, height=3, width=2, hidden=8, layers=2))
    model.eval()
    codes = torch.randint(0, 6, (5, 3, 2), generator=torch.Generator().manual_seed(2))
    per_image = []
    with torch.no_grad():
        for image in codes:
            probs = torch.softmax(model(image.unsqueeze(0))[0].double(), dim=0)  # (K, H, W)
            bits = sum(
                -math.log2(float(probs[image[r, c], r, c])) for r in range(3) for c in range(2)
            )
            per_image.append(bits)
    bits_per_image = split_bits_per_code(model, codes, None, batch=2) * 6
    assert bits_per_image == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)
