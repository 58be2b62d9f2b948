"""Images/s of geovq's train-vae loop, each figure beside a named peer measured in the same
run: medians of repeats, interleaved so machine load hits both alike.

    python benchmarks/train_throughput.py          # geovq.training.train vs a bare PyTorch loop
    python benchmarks/train_throughput.py --dataset mnist5k --dataset fashion-mnist
    python benchmarks/train_throughput.py --ddp    # torchrun, 2 gloo processes vs 1

The first two time --batches whole loop iterations after --warmup of an epoch (the full
60,000 Fashion-MNIST images in memory, not an epoch of them); with several --dataset the
figures are per image against the first (goal: ~1.0, no slowdown from the bigger set), and
geovq against the bare loop on the first (goal: >= 0.9). --ddp runs ``torchrun
--nproc-per-node P -m geovq train-vae`` for P = 2 and 1 on the same global batch, each
process with cores/P threads, and reads images/s from the result's epochs (the first one
left out as warm-up when there are more). Seconds-long check: --limit 256 --batches 3
--repeats 1, or --ddp --limit 64 --epochs 1 --repeats 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from geovq.data import load_dataset, to_float
from geovq.models.vae import VAE, VAEConfig, kl_divergence, reconstruction_loss
from geovq.rundir import RunDir
from geovq.settings import DataSettings
from geovq.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


class _Enough(Exception):
    """Raised from the step once enough batches are timed: ends geovq's epoch early."""


def _vae_loss(model: VAE, images_u8: torch.Tensor, generator) -> tuple[torch.Tensor, ...]:
    images = to_float(images_u8)
    logits, mu, logvar = model(images, generator)
    rec = reconstruction_loss(logits, images, "bce")
    kl = kl_divergence(mu, logvar)
    return rec + kl, rec, kl


def bare_images_per_s(images_u8: torch.Tensor, args: argparse.Namespace) -> float:
    """The textbook loop (shuffle, index, step, backward, Adam) over the same batches."""
    torch.manual_seed(0)
    model = VAE(VAEConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(images_u8.shape[0], generator=generator)
    batches = order.split(args.batch_size)
    _check_enough(len(batches), args)
    started = 0.0
    for count, index in enumerate(batches):
        if count == args.warmup:
            started = time.perf_counter()
        if count == args.warmup + args.batches:
            break
        loss, _, _ = _vae_loss(model, images_u8[index], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return args.batches * args.batch_size / (time.perf_counter() - started)


def geovq_images_per_s(images_u8: torch.Tensor, args: argparse.Namespace, run_dir) -> float:
    """train-vae's step inside geovq.training.train, timed from the start of batch --warmup
    to the start of batch --warmup + --batches: that many whole loop iterations."""
    torch.manual_seed(0)
    model = VAE(VAEConfig())
    calls, started = 0, 0.0

    def step(batch, generator):
        nonlocal calls, started
        if calls == args.warmup:
            started = time.perf_counter()
        if calls == args.warmup + args.batches:
            raise _Enough
        calls += 1
        loss, rec, kl = _vae_loss(model, batch[0], generator)
        return loss, {"loss": loss, "recon": rec, "kl": kl}

    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, seed=0)
    _check_enough((images_u8.shape[0] + args.batch_size - 1) // args.batch_size, args)
    try:
        train(model, [images_u8], step, dict, config, run_dir, "checkpoints/bench.safetensors")
    except _Enough:
        return args.batches * args.batch_size / (time.perf_counter() - started)
    raise AssertionError(f"train ran {calls} steps without reaching the timed end")


def _check_enough(batches: int, args: argparse.Namespace) -> None:
    if batches < args.warmup + args.batches + 1:
        raise SystemExit(
            f"the split has {batches} batches of {args.batch_size}; need --warmup + --batches "
            f"+ 1 = {args.warmup + args.batches + 1}: lower them or raise --limit"
        )


def in_process(args: argparse.Namespace) -> None:
    """geovq's loop on every --dataset, and the bare loop on the first, interleaved."""
    sets = {}
    for name in args.dataset:
        started = time.perf_counter()
        dataset = load_dataset(DataSettings(dataset=name, limit=args.limit))
        sets[name] = dataset.splits["train"].images
        seconds = time.perf_counter() - started
        _say(f"{name}: {len(sets[name]):,} train images in memory, loaded in {seconds:.1f} s")
    first = args.dataset[0]
    figures: dict[str, list[float]] = {"bare": [], **{name: [] for name in sets}}
    with tempfile.TemporaryDirectory() as folder:
        run_dir = RunDir(folder)
        for repeat in range(args.repeats):
            figures["bare"].append(bare_images_per_s(sets[first], args))
            for name, images in sets.items():
                figures[name].append(geovq_images_per_s(images, args, run_dir))
            _say(f"repeat {repeat + 1}/{args.repeats} done", err=True)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    _say(
        f"threads {torch.get_num_threads()}, batch {args.batch_size}, {args.batches} timed "
        f"batches after {args.warmup}, median of {args.repeats} interleaved repeats"
    )
    _say(f"bare PyTorch loop, {first:13s}: {medians['bare']:8.1f} images/s")
    for name in sets:
        _say(f"geovq train-vae,   {name:13s}: {medians[name]:8.1f} images/s")
    _say(f"ratio geovq/bare on {first}: {medians[first] / medians['bare']:.3f}  (goal >= 0.9)")
    for name in args.dataset[1:]:
        ratio = medians[name] / medians[first]
        _say(f"ratio {name}/{first} per image: {ratio:.3f}  (goal ~1.0)")


def ddp(args: argparse.Namespace) -> None:
    """torchrun with 2 processes against 1 on the same global batch, interleaved."""
    cores = os.cpu_count() or 1
    figures: dict[int, list[float]] = {2: [], 1: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for processes in figures:
                run = Path(folder) / f"run-{processes}-{repeat}"
                figures[processes].append(_torchrun_images_per_s(run, processes, cores, args))
            _say(f"repeat {repeat + 1}/{args.repeats} done", err=True)
    two, one = (statistics.median(figures[p]) for p in (2, 1))
    _say(
        f"{cores} cores, global batch {args.batch_size}, dataset {args.dataset[0]}"
        f"{f' (limit {args.limit})' if args.limit else ''}, {args.epochs} epochs per run, "
        f"median of {args.repeats} interleaved repeats"
    )
    _say(f"torchrun 1 process  ({max(1, cores):2d} threads): {one:8.1f} images/s")
    _say(f"torchrun 2 processes ({max(1, cores // 2):2d} threads each, gloo): {two:8.1f} images/s")
    _say(f"ratio 2 processes / 1: {two / one:.3f}")


def _torchrun_images_per_s(
    run: Path, processes: int, cores: int, args: argparse.Namespace
) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={processes}", "-m", "geovq", "train-vae"]
    command += ["--run-dir", str(run), "--device", "cpu", "--dataset", args.dataset[0]]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--json"]
    command += ["--limit", str(args.limit)] if args.limit else []
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    threads = str(max(1, cores // processes))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": threads}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"torchrun with {processes} failed:\n{done.stderr[-2000:]}")
    history = json.loads(done.stdout)["metrics"]["history"]
    timed = history[1:] or history  # the first epoch warms up when there are more
    return statistics.median(epoch["images_per_s"] for epoch in timed)


def _say(line: str, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        action="append",
        help="repeat for several (default mnist5k); the first is the peer",
    )
    parser.add_argument("--limit", type=int, default=None, help="cap the train split")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ddp", action="store_true", help="torchrun 2 processes vs 1")
    parser.add_argument("--epochs", type=int, default=3, help="--ddp: epochs per run")
    parser.add_argument("--timeout", type=float, default=1800, help="--ddp: seconds per run")
    args = parser.parse_args()
    args.dataset = args.dataset or ["mnist5k"]
    if args.ddp:
        ddp(args)
    else:
        in_process(args)


if __name__ == "__main__":
    main()
