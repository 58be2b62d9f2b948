"""Several processes under torchrun: the only module that knows about ranks.

``torchrun --nproc-per-node N -m geovq train-vae ...`` starts N copies of a command. For the
training stages and ``extract`` every rank runs the same stage on the same run directory and
computes (a disjoint shard of every batch; DistributedDataParallel averages the gradients), and
rank 0 alone writes: the others hold a run directory that reads but never writes
(``rundir.Peers``), and every commit waits for all ranks, so a rank that fails anywhere stops
the command before anything lands. Every other command runs on rank 0 alone. Without torchrun
(WORLD_SIZE unset or 1) every function here is a no-op and the code runs as one process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from geovq import GeovqError
from geovq.rundir import FAULT_ENV, Peers, using_peers

if TYPE_CHECKING:
    from geovq.progress import NullProgress
    from geovq.settings import Settings

# How long a collective waits for a peer that is alive but does not answer; a peer that dies
# is noticed at once (its sockets close). Longer than anything rank 0 does alone (a commit).
TIMEOUT = timedelta(minutes=5)
# GEOVQ_FAULT_INJECT=rank-1-fails: rank 1 fails after its work, just before the commit (tests).
FAIL_POINT = "rank-{rank}-fails"

T = TypeVar("T")
_joined = False  # this process joined torchrun's process group (see exit_process)


@dataclass(frozen=True)
class World:
    """A process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> World:
    """What torchrun started this process as (its environment), whether or not it joined."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def world() -> World:
    """The process group this command computes in: torchrun's ranks inside ``session``, else
    rank 0 of 1 (so a command that runs on rank 0 alone trains as one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), launched().local_rank)


def run(
    stage: Callable[..., T], settings: Settings, progress: NullProgress, *, every_rank: bool
) -> T | None:
    """Run a stage under torchrun's ranks; the result on rank 0 (None on the others).

    ``every_rank``: the stage shards its work (training, extract); otherwise rank 0 runs it
    alone and the other ranks return at once.
    """
    here = launched()
    if not here.distributed:
        return stage(settings, progress)
    if not every_rank:
        if not here.is_main:
            return None
        progress.log(
            f"under torchrun this command does not split its work: rank 0 runs it alone, "
            f"the other {here.size - 1} processes exit"
        )
        return stage(settings, progress)
    with session(settings.device):
        result = stage(settings, progress)
    return result if here.is_main else None


@contextlib.contextmanager
def session(device: str) -> Iterator[World]:
    """Join torchrun's process group for one command, rank 0 the run directory's only writer.

    nccl when every rank has a GPU of its own, else gloo (CPUs, or ranks sharing a GPU; NCCL
    refuses two ranks on one GPU); each rank on GPU local_rank modulo the GPUs present.
    """
    here = launched()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if use_cuda else 0
    if use_cuda:
        torch.cuda.set_device(here.local_rank % gpus)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", here.size))
    backend = "nccl" if use_cuda and local_ranks <= gpus else "gloo"
    flag_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
    dist.init_process_group(backend, timeout=TIMEOUT)
    global _joined
    _joined = True
    try:
        with using_peers(_Ranks(here, flag_device or torch.device("cpu"))), _quiet_ddp():
            yield world()
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class _Ranks(Peers):
    """rundir's view of the ranks: rank 0 writes; commits and stage starts are collective."""

    def __init__(self, here: World, device: torch.device) -> None:
        self.writes = here.is_main
        self.rank = here.rank
        self.device = device

    def arrive(self) -> None:
        if os.environ.get(FAULT_ENV) == FAIL_POINT.format(rank=self.rank):
            raise GeovqError(f"rank {self.rank} failed on purpose ({FAULT_ENV})")
        dist.barrier()

    def tell(self, ok: bool) -> None:
        dist.broadcast(torch.tensor([int(ok)], device=self.device), src=0)

    def hear(self) -> bool:
        flag = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


@contextlib.contextmanager
def _quiet_ddp() -> Iterator[None]:
    # a 1x1 convolution's weight has size-1 dimensions whose strides mean nothing, yet DDP
    # warns that they differ from its bucket's; the layout is the same, so say nothing
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        yield


def exit_process(code: int | str | None) -> None:
    """End a process that joined torchrun's group at once, output flushed (else return).

    With DDP the process group's gloo threads outlive ``destroy_process_group`` (torch 2.14);
    one of them may drop the last collective's tensor while Python shuts down, and its wait
    for the GIL aborts the process ("terminate called without an active exception", SIGABRT)
    after the command's work is done, about 1 run in 25 here, and torchrun then reports the
    command as failed. The run directory is written and synced by then; nothing is lost.
    """
    if not _joined:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


# -- training ----------------------------------------------------------------------------------
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


def shard_weight(rows: int, batch_rows: int) -> float:
    """The factor on a shard's mean loss so that DDP's average of the ranks' gradients is the
    gradient of the whole batch's mean (shards may differ by a row)."""
    return rows * world().size / batch_rows


def batch_means(
    values: dict[str, torch.Tensor], rows: int, batch_rows: int
) -> dict[str, torch.Tensor]:
    """Per-shard means (scalars or small tensors) -> means over the whole batch, every rank
    the same: one all-reduce under torchrun, the values themselves in one process."""
    if not world().distributed or not values:
        return values
    keys = sorted(values)
    device = next(v.device for v in values.values() if torch.is_tensor(v))
    parts = [torch.as_tensor(values[k], device=device).detach().float() for k in keys]
    flat = torch.cat([part.reshape(-1) for part in parts]) * (rows / batch_rows)
    dist.all_reduce(flat)
    pieces = flat.split([part.numel() for part in parts])
    shaped = [piece.reshape(part.shape) for piece, part in zip(pieces, parts, strict=True)]
    return dict(zip(keys, shaped, strict=True))


def ddp_step(model: nn.Module, step: Callable, partial: bool) -> Callable:
    """`step` (batch, generator) -> (loss, terms) run through DistributedDataParallel, so the
    backward pass averages gradients over ranks, and modules that gather statistics of the
    batch (``share_statistics``) gather the whole batch's. `partial`: some parameters that
    require gradients are not trained (and may get none), which DDP must be told."""
    if not world().distributed:
        return step
    for part in model.modules():  # statistics of a batch (a VQ codebook's) over all shards
        if hasattr(part, "share_statistics"):
            part.share_statistics(sum_tensor, from_rank_zero)
    module = _StepModule(model, step)
    device = next(module.parameters()).device
    wrapped = nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=partial,
    )
    return lambda batch, generator: wrapped(batch, generator)


class _StepModule(nn.Module):
    """A step as a module's forward, so DDP's hooks see the whole computation."""

    def __init__(self, model: nn.Module, step: Callable) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch, generator):  # noqa: ANN001, ANN201
        return self.step(batch, generator)


def sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over the ranks (in place; itself in one process): statistics that a
    model gathers from its shard of the batch, e.g. a VQ codebook's EMA counts and sums."""
    if world().distributed:
        dist.all_reduce(tensor)
    return tensor


def from_rank_zero(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor on every rank (in place; itself in one process)."""
    if world().distributed:
        dist.broadcast(tensor, src=0)
    return tensor


# -- work split by batches ---------------------------------------------------------------------
def map_batches(
    fn: Callable[[int, int], Sequence[torch.Tensor]], n: int, batch_size: int
) -> list[torch.Tensor]:
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


# -- failures ----------------------------------------------------------------------------------
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
_PEER_SILENT = ("Timed out", "timed out", "Timeout")


def describe_collective_failure(error: BaseException) -> str | None:
    """One line for a collective that failed because another rank stopped or stopped
    answering (gloo/NCCL raise RuntimeError with the transport's text), else None."""
    if not isinstance(error, RuntimeError) or not launched().distributed:
        return None
    text = str(error)
    gone = next((marker for marker in _PEER_GONE if marker in text), None)
    silent = next((marker for marker in _PEER_SILENT if marker in text), None)
    if gone:
        why = f"another process of this torchrun command stopped ({gone}; its own line says why)"
    elif silent:
        seconds = int(TIMEOUT.total_seconds())
        why = f"another process of this torchrun command did not answer within {seconds} s"
    else:
        return None
    return f"{why}; rank 0 commits a stage only once every rank has finished it"


def tag(line: str) -> str:
    """An error line as this rank prints it: ranks other than 0 say who they are."""
    here = launched()
    return f"rank {here.rank}/{here.size}: {line}" if here.rank > 0 else line
