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
