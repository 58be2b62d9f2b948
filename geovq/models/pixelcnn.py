"""Gated PixelCNN prior over grids of discrete codes (N, H, W) with values in [0, K).

Van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders": a vertical stack
sees the rows above, a horizontal stack sees the current row to the left, and the vertical stack
reaches the horizontal one only shifted down by one row, so the logits at (r, c) depend on exactly
the codes before it in raster (row-major) order, with no blind spot. Every layer is gated,
tanh(a) * sigmoid(b); a learned per-position embedding (some codebooks are per position) and, for a
conditional model, a label embedding are projected into every layer's gate pre-activations.

Receptive field: the first layer splits the paper's 7x7 kernel into a (4, 7) vertical kernel and a
strictly-left (1, 3) horizontal one; later layers split 3x3 into (2, 3) and (1, 2). With L layers
the output at (r, c) sees R = 3 + (L - 1) codes to its left and, through the vertical stack, rows
r-1 .. r-1-R at columns c-R .. c+R. The default L = 6 (R = 8) covers the whole past of any grid up
to 10 rows by 9 columns; `PixelCNNConfig.covers_past` says whether a grid is covered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

FIRST_KERNEL = 7
KERNEL = 3


@dataclass(frozen=True)
class PixelCNNConfig:
    """Architecture of a gated PixelCNN; stored as JSON in the weights' metadata."""

    num_codes: int
    height: int
    width: int
    hidden: int = 64
    layers: int = 6
    num_classes: int = 0

    def __post_init__(self) -> None:
        for name in ("num_codes", "height", "width", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(
                f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}"
            )

    @property
    def reach(self) -> int:
        """R: codes seen to the left in the current row, and either side in the rows above."""
        return FIRST_KERNEL // 2 + (self.layers - 1) * (KERNEL // 2)

    @property
    def covers_past(self) -> bool:
        """Whether every position sees every code before it in raster order."""
        return self.width - 1 <= self.reach and self.height - 1 <= self.reach + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PixelCNNConfig:
        return cls(**json.loads(text))


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the same map moved one row down, a zero row on top."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the same map moved one column right, a zero column on the left."""
    return F.pad(x, (1, 0))[:, :, :, :-1]


def gate(pre: torch.Tensor) -> torch.Tensor:
    """(N, 2C, H, W) pre-activations [a, b] -> tanh(a) * sigmoid(b), (N, C, H, W)."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks: (v, h, condition), each (N, C, H, W) -> (v, h).

    The vertical output at (r, c) sees rows <= r (the current row included), so it reaches the
    horizontal stack only shifted down a row. The first layer's horizontal conv sees strictly-left
    codes and has no residual: its input at (r, c) is the code at (r, c) itself.
    """

    def __init__(self, hidden: int, kernel: int, first: bool) -> None:
        super().__init__()
        half = kernel // 2
        self.first = first
        self.vertical_padding = (half, half, half, 0)  # left, right, top, bottom
        self.horizontal_width = half if first else half + 1
        self.vertical_conv = nn.Conv2d(hidden, 2 * hidden, (half + 1, kernel))
        self.horizontal_conv = nn.Conv2d(hidden, 2 * hidden, (1, self.horizontal_width))
        self.vertical_to_horizontal = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.horizontal_out = nn.Conv2d(hidden, hidden, 1)
        self.condition_to_gates = nn.Conv2d(hidden, 4 * hidden, 1, bias=False)

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v_condition, h_condition = self.condition_to_gates(condition).chunk(2, dim=1)
        v_pre = self.vertical_conv(F.pad(v, self.vertical_padding)) + v_condition
        h_in = shift_right(h) if self.first else h
        h_pre = (
            self.horizontal_conv(F.pad(h_in, (self.horizontal_width - 1, 0)))
            + self.vertical_to_horizontal(shift_down(v_pre))
            + h_condition
        )
        h_out = self.horizontal_out(gate(h_pre))
        if not self.first:
            h_out = h_out + h
        return gate(v_pre), h_out


class GatedPixelCNN(nn.Module):
    """Codes (N, H, W) int64 in [0, K) -> logits (N, K, H, W), causal in raster order."""

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden
        self.code_embedding = nn.Embedding(config.num_codes, hidden)
        self.position_embedding = nn.Parameter(torch.randn(hidden, config.height, config.width))
        self.label_embedding = (
            nn.Embedding(config.num_classes, hidden) if config.num_classes > 0 else None
        )
        self.layers = nn.ModuleList(
            GatedLayer(hidden, FIRST_KERNEL if i == 0 else KERNEL, first=i == 0)
            for i in range(config.layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, config.num_codes, 1),
        )

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(codes, labels)
        return self.top_rows_logits(codes, labels)

    def top_rows_logits(
        self, codes: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N, K, h, W) of the top h rows from their codes (N, h, W) alone, h <= H.

        Exact by causality (rows never see rows below), so sampling row r only computes rows <= r.
        Inputs are not checked: `forward` does that.
        """
        rows = codes.shape[1]
        x = self.code_embedding(codes).permute(0, 3, 1, 2)
        # Position and label depend on no code, so feeding them at (r, c) keeps causality.
        condition = self.position_embedding[:, :rows].unsqueeze(0)
        if labels is not None:
            condition = condition + self.label_embedding(labels)[:, :, None, None]
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, condition)
        return self.head(h)

    def _check_inputs(self, codes: torch.Tensor, labels: torch.Tensor | None) -> None:
        config = self.config
        grid = (config.height, config.width)
        if codes.dim() != 3 or tuple(codes.shape[1:]) != grid:
            raise ValueError(f"codes must be (N, {grid[0]}, {grid[1]}), got {tuple(codes.shape)}")
        if config.num_classes == 0 and labels is not None:
            raise ValueError("labels given to an unconditional PixelCNN (num_classes = 0)")
        if config.num_classes > 0 and labels is None:
            raise ValueError(
                f"this PixelCNN is conditional ({config.num_classes} classes): pass labels"
            )
        if labels is not None and tuple(labels.shape) != (codes.shape[0],):
            raise ValueError(f"labels must be ({codes.shape[0]},), got {tuple(labels.shape)}")


def code_nll_bits(
    model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Total negative log-likelihood of each code grid (N, H, W) in bits, (N,); differentiable."""
    logits = model(codes, labels)
    nats = F.cross_entropy(logits, codes, reduction="none")
    return nats.flatten(1).sum(dim=1) / math.log(2)


@torch.no_grad()
def sample_codes(
    model: GatedPixelCNN,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ancestral samples (n, H, W) int64 in raster order; deterministic given `generator`.

    Logits are divided by `temperature` (> 0); `top_k` > 0 keeps only the k largest at each step.
    The generator must live on the sampling device (default: the model's).
    """
    num_codes = model.config.num_codes
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= top_k <= num_codes:
        raise ValueError(f"top_k must be in [0, {num_codes}] (0 = off), got {top_k}")

    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits / temperature
        if top_k > 0:
            kth_largest = logits.topk(top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth_largest, -math.inf)
        probs = logits.softmax(dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _decode_raster(model, n, labels, device, pick)


@torch.no_grad()
def greedy_codes(model: GatedPixelCNN, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Argmax decoding in raster order, (n, H, W) int64: the temperature -> 0 limit of sampling."""
    return _decode_raster(model, n, labels, None, lambda logits: logits.argmax(dim=1))


def _decode_raster(
    model: GatedPixelCNN,
    n: int,
    labels: torch.Tensor | None,
    device: torch.device | str | None,
    pick: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Fill an (n, H, W) grid position by position; `pick` maps (n, K) logits to (n,) codes.

    One forward of rows 0..r per position (r, c): causality makes the not-yet-filled zeros
    irrelevant, and the grids are tiny (8 to 64 positions).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    config = model.config
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if labels is not None:
        labels = labels.to(device)
    codes = torch.zeros(n, config.height, config.width, dtype=torch.long, device=device)
    model._check_inputs(codes, labels)  # the loop's top_rows_logits does not check
    for row in range(config.height):
        for col in range(config.width):
            logits = model.top_rows_logits(codes[:, : row + 1], labels)[:, :, row, col]
            codes[:, row, col] = pick(logits)
    return codes


def unigram_bits(train_codes: torch.Tensor, test_codes: torch.Tensor, num_codes: int) -> float:
    """Bits per code of `test_codes` under the code frequencies of `train_codes`.

    Add-one (Laplace) smoothing keeps codes unseen in training finite; the baseline a prior
    must beat.
    """
    for name, codes in (("train_codes", train_codes), ("test_codes", test_codes)):
        if codes.numel() and (codes.min() < 0 or codes.max() >= num_codes):
            raise ValueError(f"{name} must lie in [0, {num_codes})")
    if test_codes.numel() == 0:
        raise ValueError("test_codes is empty")
    counts = torch.bincount(train_codes.flatten().long(), minlength=num_codes).double() + 1.0
    log2_probs = torch.log2(counts / counts.sum())
    return float(-log2_probs[test_codes.flatten().long()].mean())
