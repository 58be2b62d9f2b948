"""Training curves: every trained stage appends one JSON line per epoch to
``RUN/logs/<stage>.jsonl``; with ``--log tensorboard`` it also writes TensorBoard event files
under ``RUN/logs/tb/<stage>/`` — loss terms, held-out metrics, learning rate, images/s and a
grid of reconstructions every few epochs. ``training.train`` calls ``epoch`` after each one.

Logs are for watching a run, not artifacts: written in place as training goes (never staged),
from the first completed epoch on (a stage that fails before it leaves no log), and started
afresh when a stage starts from scratch (not on ``--resume``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from geovq import GeovqError

LOGS = "logs"
# A reconstruction grid every IMAGE_EVERY epochs, and after the first and the last.
IMAGE_EVERY = 5


def scalar_tag(key: str) -> str:
    """A history key as a TensorBoard tag: ``train_loss`` -> ``train/loss``,
    ``test_mse_per_pixel`` -> ``test/mse_per_pixel``, ``images_per_s`` -> ``speed/images_per_s``."""
    for prefix in ("train", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key.removeprefix(prefix + '_')}"
    if key in ("images_per_s", "lr"):
        return {"images_per_s": "speed/images_per_s", "lr": "train/lr"}[key]
    return f"metrics/{key}"


class TrainingLog:
    """The curves of one stage (``key``, e.g. ``train-prior/quant-w2-k256``) in ``run_dir``.

    ``reconstructions()``, if given, returns (2N, C, H, W) images in [0, 1]: N originals then
    their N reconstructions, drawn as a two-row grid.
    """

    def __init__(
        self,
        run_dir: Path,
        key: str,
        tensorboard: bool = False,
        reconstructions: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.jsonl = Path(run_dir) / LOGS / f"{key}.jsonl"
        self.tb_dir = Path(run_dir) / LOGS / "tb" / key
        self.tensorboard = tensorboard
        self.reconstructions = reconstructions
        self._writer = None
        if tensorboard:
            _require_tensorboard()

    def begin(self, resumed_from: int, epochs: int) -> None:
        """Start the curves: afresh from scratch, appended to on ``--resume``."""
        self.epochs = epochs
        self._fresh = resumed_from == 0
        self._opened = False

    def _open(self) -> None:
        """At the first completed epoch: clear a from-scratch stage's old curves, open TB."""
        self._opened = True
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        if self._fresh:
            self.jsonl.write_text("")
            if self.tensorboard:
                shutil.rmtree(self.tb_dir, ignore_errors=True)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tb_dir))

    def epoch(self, record: dict[str, Any], lr: float) -> None:
        """One epoch's history record (``epoch``, ``train_*``, held-out metrics, images/s)."""
        if not self._opened:
            self._open()
        line = {**record, "lr": lr}
        with self.jsonl.open("a") as stream:
            stream.write(json.dumps(line) + "\n")
        if self._writer is None:
            return
        step = int(record["epoch"])
        for key, value in line.items():
            if key != "epoch" and isinstance(value, int | float):
                self._writer.add_scalar(scalar_tag(key), float(value), step)
        if self.reconstructions is not None and _image_epoch(step, self.epochs):
            with torch.no_grad():
                images = self.reconstructions().detach().float().cpu().clamp(0, 1)
            from torchvision.utils import make_grid

            grid = make_grid(images, nrow=images.shape[0] // 2, padding=2, pad_value=1.0)
            self._writer.add_image("reconstructions", grid, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def originals_and(originals_u8: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """(2N, C, H, W) in [0, 1]: uint8 originals then their reconstructions (logits or [0, 1])."""
    return torch.cat([originals_u8.float().cpu() / 255.0, reconstructions.float().cpu()])


def _image_epoch(epoch: int, epochs: int) -> bool:
    return epoch == 1 or epoch == epochs or epoch % IMAGE_EVERY == 0


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise GeovqError(
            "--log tensorboard needs the tensorboard package: pip install 'geovq[tensorboard]' "
            "(or drop --log; RUN/logs/<stage>.jsonl is written either way)"
        ) from None
