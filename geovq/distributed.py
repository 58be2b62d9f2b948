"""Several processes under torchrun: the only module that knows about ranks.

``torchrun --nproc-per-node N -m geovq train-vae ...`` starts N copies of a command. Every rank
computes (each a disjoint shard of every batch, gradients averaged by PyTorch's
DistributedDataParallel); rank 0 alone writes. The other ranks run the same stage code on a
*shadow* of the run directory (a private folder of symlinks to the run's files), so whatever
they would write lands there and is thrown away, and the run directory sees rank 0's writes
only, through whatever commit path RunDir uses. Without torchrun (WORLD_SIZE unset or 1) every
function here is a no-op and the code runs as a single process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The torchrun environment of this process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return world().is_main


@contextlib.contextmanager
def session(run_dir: Path, device: str) -> Iterator[Path]:
    """Join the process group for one command; yields the run directory this rank uses.

    nccl on GPUs, gloo on CPUs (and when ranks share a GPU); each rank on GPU local_rank
    modulo the GPUs present. Rank 0 gets `run_dir`, the others a shadow of it.
    """
    here = world()
    if not here.distributed:
        yield run_dir
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if use_cuda else 0
    if use_cuda:
        torch.cuda.set_device(here.local_rank % gpus)
    # NCCL refuses two ranks on one GPU; gloo carries CUDA tensors too, only slower
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", here.size))
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if use_cuda and local_ranks <= gpus else "gloo")
    shadow = None if here.is_main else Path(tempfile.mkdtemp(prefix=f"geovq-rank{here.rank}-"))
    try:
        if shadow is not None:
            _mirror(Path(run_dir), shadow)
        yield run_dir if shadow is None else shadow
        dist.barrier()
    finally:
        if shadow is not None:
            shutil.rmtree(shadow, ignore_errors=True)
        if started:
            dist.destroy_process_group()


def _mirror(source: Path, shadow: Path) -> None:
    """Symlink every artifact of `source` into `shadow` (folders made real, hidden bookkeeping
    left out): reads see the run's files, writes replace the links inside the shadow only."""
    if not source.is_dir():
        return
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts):
            continue  # the lock, staging folders, journals: rank 0's own bookkeeping
        target = shadow / relative
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's rows of one batch of indices (every size-th, from its rank)."""
    here = world()
    return index[here.rank :: here.size] if here.distributed else index


def rank_seed(seed: int) -> int:
    """A seed of this rank's own (the seed itself on rank 0): per-rank noise stays independent."""
    return seed + 1_000_003 * world().rank


def reseed_other_ranks(generator: torch.Generator, seed: int) -> None:
    """After --resume: rank 0 continues the checkpoint's stream (it wrote it); the other ranks,
    whose streams no checkpoint holds, start fresh ones of their own."""
    if world().rank > 0:
        generator.manual_seed(rank_seed(seed))


def ddp_step(model: nn.Module, step: Callable, partial: bool) -> Callable:
    """`step` (batch, generator) -> (loss, terms) run through DistributedDataParallel, so the
    backward pass averages gradients over ranks. `partial`: only some parameters are trained
    (the rest still require gradients), which DDP must be told."""
    if not world().distributed:
        return step
    wrapped = DistributedDataParallel(_StepModule(model, step), find_unused_parameters=partial)
    return lambda batch, generator: wrapped(batch, generator)


class _StepModule(nn.Module):
    """A step as a module's forward, so DDP's forward hooks see the whole computation."""

    def __init__(self, model: nn.Module, step: Callable) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch, generator):  # noqa: ANN001, ANN201
        return self.step(batch, generator)


def DistributedDataParallel(module: nn.Module, find_unused_parameters: bool):  # noqa: N802
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def sum_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each key summed over all ranks (the values themselves in a single process)."""
    if not world().distributed or not values:
        return values
    keys = sorted(values)
    total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(keys, total.tolist(), strict=True))


def map_batches(fn: Callable[[int, int], Sequence[torch.Tensor]], n: int, batch_size: int):
    """fn(start, stop) over the batches of range(n), batches dealt round-robin to the ranks,
    results (CPU tensors) gathered on every rank in batch order: the concatenation per output
    equals a single process's."""
    here = world()
    starts = range(0, n, batch_size)
    mine = {
        s: fn(s, min(s + batch_size, n)) for i, s in enumerate(starts) if i % here.size == here.rank
    }
    if here.distributed:
        gathered: list[dict | None] = [None] * here.size
        dist.all_gather_object(gathered, mine)
        mine = {s: out for part in gathered for s, out in part.items()}
    ordered = [mine[s] for s in starts]
    if not ordered:
        return []
    return [torch.cat([outputs[i] for outputs in ordered]) for i in range(len(ordered[0]))]
