"""Drive a VAE's KL to a target rate by adapting β: a Lagrange multiplier on the constraint
KL = target, updated multiplicatively as in GECO (Rezende & Viola 2018, "Taming VAEs").

A post-hoc code of B bits per image can carry at most B·ln 2 nats; a VAE whose KL is far below
that wastes the code's capacity, one far above it loses more to quantization. Training
minimises recon + β·KL while β follows log β ← log β + gain · clip((KL_ema − target) / target,
±1) after every step, so β falls while the KL is short of the target and rises past it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BETA_MIN = 1e-5
BETA_MAX = 1e4


def bits_to_nats(bits: float) -> float:
    """A rate in bits as nats (the unit of the Gaussian KL)."""
    return bits * math.log(2)


@dataclass
class RateController:
    """β as a multiplier that holds the KL (nats per image) at ``target_nats``.

    ``kl_ema`` smooths the per-batch KL (``momentum``) so β does not chase batch noise; the
    relative error is clipped to ±1 so one step moves β by at most a factor e^gain.
    """

    target_nats: float
    beta: float = 1.0
    gain: float = 0.05
    momentum: float = 0.9
    kl_ema: float | None = None

    def __post_init__(self) -> None:
        if self.target_nats <= 0:
            raise ValueError(f"target rate must be > 0 nats, got {self.target_nats}")
        if self.beta <= 0:
            raise ValueError(f"the controller's initial beta must be > 0, got {self.beta}")
        if self.gain <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"need gain > 0 and 0 <= momentum < 1, got {self.gain}, {self.momentum}"
            )

    def update(self, kl: float) -> float:
        """Fold one batch's mean KL (nats per image; a float or a 0-d tensor) in; returns β."""
        kl = float(kl)
        if self.kl_ema is None:
            self.kl_ema = kl
        else:
            self.kl_ema = self.momentum * self.kl_ema + (1 - self.momentum) * kl
        error = max(-1.0, min(1.0, (self.kl_ema - self.target_nats) / self.target_nats))
        self.beta = min(BETA_MAX, max(BETA_MIN, self.beta * math.exp(self.gain * error)))
        return self.beta

    def state(self) -> dict[str, float]:
        """What an epoch record keeps so ``--resume`` continues with the same β."""
        return {"beta": self.beta, "kl_ema": self.kl_ema if self.kl_ema is not None else -1.0}

    def restore(self, record: dict[str, float]) -> None:
        self.beta = record["beta"]
        self.kl_ema = record["kl_ema"] if record["kl_ema"] >= 0 else None
