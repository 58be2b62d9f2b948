"""Training images/s on all of Fashion-MNIST (60,000 images) vs mnist5k (4,000): does the full
set's size slow training down per image?

Both run the train-vae step inside geovq.training.train itself (its shuffling, batch indexing
of the in-memory uint8 tensor, step, backward, Adam), with the same VAE, batch size and threads.
An epoch of 60,000 images is long on 2 cores, so each measurement times batches --warmup+1 to
--warmup+--batches of an epoch and then stops the loop. Measurements alternate between the two
data sets so machine load affects both alike; medians are reported. Goal: ratio ~1.0.

    python benchmarks/data_throughput.py [--batches 40] [--repeats 5] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from geovq.data import load_dataset, to_float
from geovq.models.vae import VAE, VAEConfig, kl_divergence, reconstruction_loss
from geovq.rundir import RunDir
from geovq.settings import DataSettings
from geovq.training import TrainConfig, train


class _Enough(Exception):
    """Raised from the step once enough batches are timed: ends geovq's epoch early."""


def images_per_s(
    images_u8: torch.Tensor, batch_size: int, warmup: int, batches: int, run_dir: RunDir
) -> float:
    """Images/s over ``batches`` batches of train-vae's loop, after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    model = VAE(VAEConfig())
    calls, started = 0, 0.0

    def step(batch, generator):
        nonlocal calls, started
        if calls == warmup:
            started = time.perf_counter()
        if calls == warmup + batches:
            raise _Enough
        calls += 1
        images = to_float(batch[0])
        logits, mu, logvar = model(images, generator)
        rec = reconstruction_loss(logits, images, "bce")
        kl = kl_divergence(mu, logvar)
        return rec + kl, {"loss": rec + kl, "recon": rec, "kl": kl}

    config = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, seed=0)
    try:
        train(model, [images_u8], step, dict, config, run_dir, "checkpoints/bench.safetensors")
    except _Enough:
        # From the start of timed batch 1 to the start of batch ``batches + 1``: exactly
        # ``batches`` whole loop iterations (index, step, backward, Adam), all full batches.
        return batches * batch_size / (time.perf_counter() - started)
    raise SystemExit(f"the data set has fewer than {warmup + batches + 1} batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    sets = {}
    for name in ("mnist5k", "fashion-mnist"):
        started = time.perf_counter()
        dataset = load_dataset(DataSettings(dataset=name))
        sets[name] = dataset.splits["train"].images
        seconds = time.perf_counter() - started
        print(f"{name}: {len(sets[name]):,} train images, loaded in {seconds:.1f} s")
        if dataset.source_note:
            print(f"  {dataset.source_note}")
    figures: dict[str, list[float]] = {name: [] for name in sets}
    with tempfile.TemporaryDirectory() as folder:
        run_dir = RunDir(folder)
        for _ in range(args.repeats):
            for name, images in sets.items():
                figures[name].append(
                    images_per_s(images, args.batch_size, args.warmup, args.batches, run_dir)
                )
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(
        f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.batches} timed "
        f"batches after {args.warmup}, {args.repeats} interleaved repeats"
    )
    for name, values in figures.items():
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:14s}: {medians[name]:8.1f} images/s (median; all: {spread})")
    ratio = medians["fashion-mnist"] / medians["mnist5k"]
    print(f"ratio fashion-mnist/mnist5k per image: {ratio:.3f}  (goal ~1.0)")


if __name__ == "__main__":
    main()
