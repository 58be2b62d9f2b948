"""Throughput of the gated PixelCNN prior: training codes/s and sampling time, on 2x4 and 7x7 grids.

Run: python benchmarks/prior.py [--threads N] [--device cpu|cuda]. Prints one table; not a test.
Training figures are the median over timed epochs (after one warm-up epoch) of random K = 256 code
grids, so they measure the machinery, not learning.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from geovq.models.pixelcnn import GatedPixelCNN, PixelCNNConfig, code_nll_bits, sample_codes

GRIDS = [(2, 4), (7, 7)]
NUM_CODES = 256
NUM_GRIDS = 4000
BATCH_SIZE = 128
EPOCHS = 4
SAMPLES = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop_codes_per_s(
    model: GatedPixelCNN, codes: torch.Tensor, batch_size: int, epochs: int
) -> float:
    """Median codes/s over `epochs` timed epochs of a plain Adam loop on `codes` (N, H, W).

    One untimed warm-up epoch first (allocator, kernel selection). A partial last batch is kept.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    device = codes.device

    def run_epoch() -> float:
        order = torch.randperm(len(codes), generator=generator).to(device)
        _sync(device)
        start = time.perf_counter()
        for batch_index in order.split(batch_size):
            loss = code_nll_bits(model, codes[batch_index]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return codes.numel() / (time.perf_counter() - start)

    run_epoch()
    return statistics.median(run_epoch() for _ in range(epochs))


# --- geovq training machinery -------------------------------------------------------------
def machinery_codes_per_s(
    model: GatedPixelCNN, codes: torch.Tensor, batch_size: int, epochs: int
) -> float:
    """Median codes/s of single-epoch calls of geovq.training.train with train-prior's step.

    Wall time per call, so optimizer set-up and the per-epoch checkpoint write are included.
    """
    import math
    import tempfile

    import torch.nn.functional as F

    from geovq.rundir import RunDir
    from geovq.training import TrainConfig, train

    def step(batch, generator):
        nats = F.cross_entropy(model(batch[0]), batch[0])
        return nats, {"bits_per_code": nats / math.log(2)}

    with tempfile.TemporaryDirectory() as folder:
        run_dir = RunDir(folder)

        def run_epoch() -> float:
            config = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, seed=0)
            _sync(codes.device)
            start = time.perf_counter()
            train(model, [codes], step, dict, config, run_dir, "checkpoints/prior.safetensors")
            _sync(codes.device)
            return codes.numel() / (time.perf_counter() - start)

        run_epoch()
        return statistics.median(run_epoch() for _ in range(epochs))


TRAINING_LOOPS: dict[str, Callable[[GatedPixelCNN, torch.Tensor, int, int], float]] = {
    "bare PyTorch loop": bare_loop_codes_per_s,
    "geovq train-prior loop": machinery_codes_per_s,
}
# -------------------------------------------------------------------------------------------


def sampling_seconds(model: GatedPixelCNN, n: int) -> float:
    """Wall time of drawing n grids with `sample_codes` (one forward per position)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    sample_codes(model, 8, generator=generator)  # warm-up
    _sync(device)
    start = time.perf_counter()
    sample_codes(model, n, generator=generator)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"K = {NUM_CODES}, {NUM_GRIDS} grids, batch {BATCH_SIZE}, median of {EPOCHS} epochs")
    for height, width in GRIDS:
        config = PixelCNNConfig(num_codes=NUM_CODES, height=height, width=width)
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, NUM_CODES, (NUM_GRIDS, height, width), generator=generator)
        codes = codes.to(device)
        rates = {}
        for name, codes_per_s in TRAINING_LOOPS.items():
            torch.manual_seed(0)
            model = GatedPixelCNN(config).to(device)
            rates[name] = codes_per_s(model, codes, BATCH_SIZE, EPOCHS)
            print(f"{height}x{width}  train  {name:<24} {rates[name]:>12,.0f} codes/s")
        ratio = rates["geovq train-prior loop"] / rates["bare PyTorch loop"]
        print(f"{height}x{width}  train  ratio geovq/bare {'':<6} {ratio:>12.3f}")
        torch.manual_seed(0)
        model = GatedPixelCNN(config).to(device)
        seconds = sampling_seconds(model, SAMPLES)
        print(f"{height}x{width}  sample {SAMPLES} images {'':<12} {seconds:>12.2f} s")


if __name__ == "__main__":
    main()
