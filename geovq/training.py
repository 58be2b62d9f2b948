"""The training machinery every trained stage shares: batching, epochs, progress,
checkpoints (safetensors, never pickle), exact ``--resume`` and a clean Ctrl-C.

A stage supplies a ``step`` (one batch -> loss and logged terms) and an ``evaluate`` (per-epoch
held-out metrics); this module does the rest the same way for the VAE, VQ-VAE, prior and refit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geovq import GeovqError, Interrupted, distributed
from geovq.progress import NullProgress
from geovq.rundir import RunDir
from geovq.training_log import TrainingLog

# A step returns the loss to minimise and the terms to log (tensors, averaged over the epoch);
# a term whose name starts with "_" is not logged, only handed to ``on_step_end``.
StepFn = Callable[
    [Sequence[torch.Tensor], torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]
]
EvalFn = Callable[[], dict[str, float]]
STEP_LOSS = " loss"  # the step's loss among its terms while they are averaged (no term's name)
UNLOGGED = "_"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GeovqError("--device cuda but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    resume: bool = False


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    images_per_s: float = 0.0
    resumed_from: int = 0


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches (the last one may be short)."""
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def train(
    model: nn.Module,
    data: Sequence[torch.Tensor],
    step: StepFn,
    evaluate: EvalFn,
    config: TrainConfig,
    run_dir: RunDir,
    checkpoint: str,
    *,
    params: Sequence[nn.Parameter] | None = None,
    progress: NullProgress | None = None,
    label: str = "train",
    on_epoch_end: Callable[[int], None] | None = None,
    on_step_end: Callable[[dict[str, torch.Tensor]], None] | None = None,
    log: TrainingLog | None = None,
) -> TrainResult:
    """Adam over ``params`` (default: all of the model's) for ``config.epochs`` epochs.

    ``data`` are tensors on the model's device with one row per example; each batch is those
    rows, passed to ``step`` with a generator for any noise. A checkpoint is written after
    every epoch to ``checkpoint`` (a path inside the run directory); ``log`` gets each
    epoch's record for the training curves; ``on_step_end`` each step's terms, as means over
    the whole batch. Under torchrun each rank steps on its shard of every batch through
    DistributedDataParallel (geovq.distributed), so ``step``'s loss and terms must be means
    over the batch's rows; the terms are averaged over the ranks every step.
    """
    progress = progress or NullProgress()
    device = next(model.parameters()).device
    trainable = list(params) if params is not None else list(model.parameters())
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(distributed.rank_seed(config.seed + 1))
    trained = {id(p) for p in trainable}
    untrained_with_grads = any(p.requires_grad and id(p) not in trained for p in model.parameters())
    step = distributed.ddp_step(model, step, partial=untrained_with_grads)
    log = log if run_dir.writes else None  # the curves are rank 0's to write
    result = TrainResult()
    if config.resume:
        result.resumed_from, result.history = load_checkpoint(
            run_dir, checkpoint, model, optimizer, shuffle_gen, noise_gen
        )
        if result.resumed_from > config.epochs:
            raise GeovqError(
                f"the checkpoint is at epoch {result.resumed_from}, past --epochs "
                f"{config.epochs}; pass --epochs {result.resumed_from} or more"
            )
        distributed.reseed_other_ranks(noise_gen, config.seed + 1 + result.resumed_from)
        progress.log(f"{label}: resuming after epoch {result.resumed_from}")
    if log is not None:
        log.begin(result.resumed_from, config.epochs)
    n = data[0].shape[0]
    seen, busy = 0, 0.0
    kept = result.resumed_from
    try:
        for epoch in range(result.resumed_from + 1, config.epochs + 1):
            model.train()
            progress.start(
                f"{label} epoch {epoch}/{config.epochs}",
                total=(n + config.batch_size - 1) // config.batch_size,
            )
            started = time.perf_counter()
            totals: dict[str, Any] = {}
            rows = 0
            for step_index, whole in enumerate(batches(n, config.batch_size, shuffle_gen), 1):
                if len(whole) < distributed.world().size:
                    continue  # a last batch too short to give every rank a row
                index = distributed.shard(whole)
                batch = [tensor[index.to(tensor.device)] for tensor in data]
                with _autocast(device):
                    loss, terms = step(batch, noise_gen)
                means = distributed.batch_means({STEP_LOSS: loss, **terms}, len(index), len(whole))
                means = {key: _detached(value) for key, value in means.items()}
                batch_loss = means.pop(STEP_LOSS)
                # every rank sees the same batch loss, so a non-finite one stops them all
                check_finite_loss(batch_loss, label, epoch, step_index, config.lr)
                optimizer.zero_grad(set_to_none=True)
                (loss * distributed.shard_weight(len(index), len(whole))).backward()
                optimizer.step()
                if on_step_end is not None:
                    on_step_end(means)
                for key, value in means.items():
                    if not key.startswith(UNLOGGED):
                        totals[key] = totals.get(key, 0.0) + value * len(whole)
                rows += len(whole)
                progress.advance(1, loss=float(batch_loss))
            elapsed = time.perf_counter() - started
            seen, busy = seen + n, busy + elapsed
            progress.finish()
            model.eval()
            with torch.no_grad():
                record = {"epoch": epoch}
                record.update({f"train_{k}": float(v) / rows for k, v in totals.items()})
                record.update(evaluate())
            record["images_per_s"] = n / elapsed
            result.history.append(record)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if log is not None:
                log.epoch(record, lr=optimizer.param_groups[0]["lr"])
            save_checkpoint(
                run_dir, checkpoint, model, optimizer, shuffle_gen, noise_gen, epoch, result.history
            )
            kept = result.epochs_run = epoch
            progress.log(f"{label} epoch {epoch}: " + _summary(record))
    except KeyboardInterrupt:
        progress.finish()
        if kept == 0:
            raise Interrupted(
                f"{label} interrupted before its first epoch ended; nothing was kept, so "
                "rerun without --resume"
            ) from None
        raise Interrupted(
            f"{label} interrupted; epoch {kept} is kept in {run_dir.file(checkpoint)}; "
            "rerun with --resume to continue"
        ) from None
    finally:
        if log is not None:
            log.close()
    result.epochs_run = config.epochs
    result.images_per_s = seen / busy if busy else 0.0
    model.eval()
    return result


def _detached(value: Any) -> Any:
    return value.detach() if torch.is_tensor(value) else value


def check_finite_loss(loss: torch.Tensor, label: str, epoch: int, step: int, lr: float) -> None:
    """Stop at the first NaN or infinite loss: training on would only write garbage."""
    if not bool(torch.isfinite(loss.detach())):
        raise GeovqError(
            f"{label}: the loss became {float(loss.detach())} at epoch {epoch}, step {step}; "
            f"nothing was written. Lower --lr (now {lr:g}) or check the data"
        )


def _autocast(device: torch.device):
    # Training stays in fp32 on every device: on an H200, bf16 autocast collapsed the flat VAE
    # (KL -> 0, test MSE 0.077 against ~0.016 in fp32), so speed is not worth that risk.
    return torch.autocast(device_type=device.type, enabled=False)


def _summary(record: dict[str, float]) -> str:
    """The epoch's scalar figures on one line (per-chunk lists such as ``betas`` stay in the
    history and logs)."""
    return "  ".join(
        f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and isinstance(v, int | float)
    )


# -- checkpoints -------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: RunDir,
    relpath: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    noise_gen: torch.Generator,
    epoch: int,
    history: list[dict[str, float]],
) -> None:
    """Weights, optimizer state, both RNG states and the epoch, as one safetensors file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    tensors["rng.shuffle"] = shuffle_gen.get_state()
    tensors["rng.noise"] = noise_gen.get_state()
    metadata = {
        "epoch": str(epoch),
        "param_groups": json.dumps(state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "history": json.dumps(history),
    }
    run_dir.save_tensors(relpath, tensors, metadata)


def checkpoint_history(run_dir: RunDir, relpath: str) -> list[dict[str, float]]:
    """The epoch records saved with a checkpoint ([] when there is none)."""
    if not run_dir.exists(relpath):
        return []
    _, metadata = run_dir.load_tensors(relpath, "checkpoint")
    return json.loads(metadata["history"])


def load_checkpoint(
    run_dir: RunDir,
    relpath: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    noise_gen: torch.Generator,
) -> tuple[int, list[dict[str, float]]]:
    """Restore what ``save_checkpoint`` wrote; returns (epoch, history)."""
    if not run_dir.exists(relpath):
        raise GeovqError(
            f"--resume given but there is no checkpoint at {run_dir.file(relpath)}; "
            "drop --resume to start from scratch"
        )
    tensors, metadata = run_dir.load_tensors(relpath, "checkpoint")
    device = next(model.parameters()).device
    weights = {
        k.removeprefix("model."): v.to(device) for k, v in tensors.items() if k.startswith("model.")
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise GeovqError(
            f"checkpoint {run_dir.file(relpath)} does not fit this model's architecture "
            f"({str(error).splitlines()[0]}); drop --resume or use the same settings"
        ) from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    for key, value in json.loads(metadata["optim_scalars"]).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict(
        {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    )
    shuffle_gen.set_state(tensors["rng.shuffle"])
    noise_gen.set_state(tensors["rng.noise"])
    return int(metadata["epoch"]), json.loads(metadata["history"])
