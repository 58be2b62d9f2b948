"""Images/s of geovq's training machinery (the train-vae step) vs a bare PyTorch loop.

Same VAE, data, batch size and threads, measured in the same process; median of several
epochs each, interleaved so machine load affects both alike. Goal: geovq >= 0.9x bare.

    python benchmarks/train_throughput.py [--epochs 5] [--limit 2000] [--batch-size 128]
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


def bare_epoch(model: VAE, optimizer, images_u8: torch.Tensor, batch_size: int, gen) -> float:
    """One epoch of the textbook loop; returns images/s."""
    started = time.perf_counter()
    order = torch.randperm(images_u8.shape[0], generator=gen)
    for index in order.split(batch_size):
        images = to_float(images_u8[index])
        logits, mu, logvar = model(images, gen)
        loss = reconstruction_loss(logits, images, "bce") + kl_divergence(mu, logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return images_u8.shape[0] / (time.perf_counter() - started)


def geovq_epoch(model: VAE, images_u8: torch.Tensor, batch_size: int, run_dir: RunDir) -> float:
    """One epoch through geovq.training.train with train-vae's step (checkpoint included)."""

    def step(batch, generator):
        images = to_float(batch[0])
        logits, mu, logvar = model(images, generator)
        rec = reconstruction_loss(logits, images, "bce")
        kl = kl_divergence(mu, logvar)
        return rec + kl, {"loss": rec + kl, "recon": rec, "kl": kl}

    config = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, seed=0)
    started = time.perf_counter()  # wall time: optimizer set-up and checkpoint write included
    train(model, [images_u8], step, dict, config, run_dir, "checkpoints/bench.safetensors")
    return images_u8.shape[0] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    images = load_dataset(DataSettings()).splits["train"].images[: args.limit]
    torch.manual_seed(0)
    bare_model, ours_model = VAE(VAEConfig()), VAE(VAEConfig())
    optimizer = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as folder:
        run_dir = RunDir(folder)
        bare_epoch(bare_model, optimizer, images, args.batch_size, gen)  # warm-up
        for _ in range(args.epochs):
            bare.append(bare_epoch(bare_model, optimizer, images, args.batch_size, gen))
            ours.append(geovq_epoch(ours_model, images, args.batch_size, run_dir))
    bare_median, ours_median = statistics.median(bare), statistics.median(ours)
    print(f"threads {torch.get_num_threads()}, batch {args.batch_size}, {images.shape[0]} images")
    print(f"bare PyTorch loop : {bare_median:8.1f} images/s (median of {len(bare)})")
    print(f"geovq train-vae   : {ours_median:8.1f} images/s (median of {len(ours)})")
    print(f"ratio geovq/bare  : {ours_median / bare_median:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
