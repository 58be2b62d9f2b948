"""Drive a VAE's KL to a target rate by adapting β: a Lagrange multiplier on the constraint
KL = target, updated multiplicatively as in GECO (Rezende & Viola 2018, "Taming VAEs").

A post-hoc code of B bits per image can carry at most B·ln 2 nats; a VAE whose KL is far below
that wastes the code's capacity, one far above it loses more to quantization. Training
minimises recon + β·KL while β follows log β ← log β + gain · clip((KL_ema − target) / target,
±1) after every step, so β falls while the KL is short of the target and rises past it.

With ``chunks`` L > 1 there is one β per chunk of the latent (a spatial VAE's positions), each
driving its chunk's KL to target/L. A fixed-length code spends the same bits on every chunk; a
VAE held only at a total rate spreads its KL unevenly (on MNIST's 7x7 grid, 10-13 bits at the
centre and 2 at the border), so the code's chunks are over- and under-filled at once.
"""

from __future__ import annotations

import math

import torch

BETA_MIN = 1e-5
BETA_MAX = 1e4


def bits_to_nats(bits: float) -> float:
    """A rate in bits as nats (the unit of the Gaussian KL)."""
    return bits * math.log(2)


class RateController:
    """β (one per chunk) as multipliers holding the KL (nats per image) at ``target_nats``.

    ``kl_emas`` smooth the per-batch KL (``momentum``) so β does not chase batch noise; the
    relative error is clipped to ±1 so one step moves β by at most a factor e^gain. ``beta``
    (the mean over chunks) is what is reported.
    """

    def __init__(
        self,
        target_nats: float,
        chunks: int = 1,
        beta: float = 1.0,
        gain: float = 0.05,
        momentum: float = 0.9,
    ) -> None:
        if target_nats <= 0:
            raise ValueError(f"target rate must be > 0 nats, got {target_nats}")
        if chunks < 1:
            raise ValueError(f"the rate needs at least one chunk, got {chunks}")
        if beta <= 0:
            raise ValueError(f"the controller's initial beta must be > 0, got {beta}")
        if gain <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"need gain > 0 and 0 <= momentum < 1, got {gain}, {momentum}")
        self.chunks, self.gain, self.momentum = chunks, gain, momentum
        self.share = target_nats / chunks
        self.log_betas = torch.full((chunks,), math.log(beta), dtype=torch.float64)
        self.kl_emas: torch.Tensor | None = None

    @property
    def betas(self) -> torch.Tensor:
        """(L,) float64 on the CPU."""
        return self.log_betas.exp()

    @property
    def beta(self) -> float:
        return float(self.betas.mean())

    def update(self, kl_per_chunk) -> torch.Tensor:
        """Fold one batch's mean KL of each chunk (L values, nats per image; a float when
        L = 1) in; returns the βs."""
        kl = torch.as_tensor(kl_per_chunk).detach().to("cpu", torch.float64).reshape(-1)
        if kl.numel() != self.chunks:
            raise ValueError(f"expected the KL of {self.chunks} chunks, got {kl.numel()}")
        if self.kl_emas is None:
            self.kl_emas = kl.clone()
        else:
            self.kl_emas = self.momentum * self.kl_emas + (1 - self.momentum) * kl
        error = ((self.kl_emas - self.share) / self.share).clamp(-1.0, 1.0)
        self.log_betas = (self.log_betas + self.gain * error).clamp(
            math.log(BETA_MIN), math.log(BETA_MAX)
        )
        return self.betas

    def state(self) -> dict[str, float | list[float]]:
        """What an epoch record keeps so ``--resume`` continues with the same βs."""
        emas = self.kl_emas.tolist() if self.kl_emas is not None else [-1.0] * self.chunks
        if self.chunks == 1:
            return {"beta": self.beta, "kl_ema": emas[0]}
        return {"beta": self.beta, "betas": self.betas.tolist(), "kl_emas": emas}

    def restore(self, record: dict) -> None:
        """From ``state()`` (a one-chunk state gives every chunk its β)."""
        betas = record.get("betas", [record["beta"]] * self.chunks)
        emas = record.get("kl_emas", [record.get("kl_ema", -1.0)] * self.chunks)
        if len(betas) != self.chunks:
            raise ValueError(f"the saved state has {len(betas)} chunks, not {self.chunks}")
        self.log_betas = torch.tensor(betas, dtype=torch.float64).log()
        self.kl_emas = None if min(emas) < 0 else torch.tensor(emas, dtype=torch.float64)
