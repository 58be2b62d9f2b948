"""Finite scalar quantization: Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple".

Each of the C channels of a code vector is squashed into a bounded interval by a scaled tanh and
rounded to one of ``levels[c]`` integers, with a straight-through gradient. The codebook is
implicit: the product grid of ∏ levels points, indexed mixed-radix (channel 0 the fastest digit),
so no codebook is learned and no code can die of neglect.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Shrinks the tanh's range a little so the outermost integer is reached but never exceeded.
BOUND_EPSILON = 1e-3


def check_levels(levels: tuple[int, ...]) -> None:
    """Raise ValueError unless ``levels`` is a non-empty tuple of integers >= 3.

    Two levels would need the even-level half shift to move the tanh by atanh(1/2 / 1/2) = ∞.
    """
    if not levels or any(int(level) < 3 for level in levels):
        raise ValueError(f"FSQ levels must be integers >= 3, one per channel, got {list(levels)}")


def codebook_size(levels: tuple[int, ...]) -> int:
    """K = ∏ levels: the size of the implicit codebook."""
    return math.prod(levels)


def bits_per_code(levels: tuple[int, ...]) -> float:
    """Σ log2 levels: the bits one code vector carries under a uniform prior."""
    return sum(math.log2(level) for level in levels)


class FiniteScalarQuantizer(nn.Module):
    """(M, C) encoder outputs -> (M, C) codes on the product grid, scaled into [-1, 1].

    Channel c takes ``levels[c]`` values. An odd level count L gives the integers -(L-1)/2 ..
    (L-1)/2; an even one is shifted by a half (tanh offset by atanh(1/2 / half-width)) so the
    L integers -L/2 .. L/2 - 1 are covered symmetrically around the bound, as in the paper.
    """

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        check_levels(levels)
        self.levels = tuple(int(level) for level in levels)
        self.k = codebook_size(self.levels)
        self.dim = len(self.levels)
        level_tensor = torch.tensor(self.levels, dtype=torch.float64)
        half_range = (level_tensor - 1) * (1 - BOUND_EPSILON) / 2
        offset = torch.where(level_tensor % 2 == 0, 0.5, 0.0)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1], dtype=torch.int64), 0)
        self.register_buffer("half_range", half_range.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_range).float(), persistent=False)
        self.register_buffer("half_width", (level_tensor // 2).float(), persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, C) values in (-L/2, L/2) (odd L: (-(L-1)/2, (L-1)/2)) before rounding."""
        return torch.tanh(z + self.shift) * self.half_range - self.offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, C) rounded integers scaled by the half width, straight-through."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self.half_width

    def codes_from_grid(self, grid_values: torch.Tensor) -> torch.Tensor:
        """(M, C) scaled grid values -> (M,) int64 mixed-radix indices in [0, ∏ levels)."""
        digits = torch.round(grid_values * self.half_width + self.half_width).to(torch.int64)
        return (digits * self.basis).sum(-1)

    def grid_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(M,) int64 indices -> (M, C) scaled grid values (the inverse of codes_from_grid)."""
        levels = torch.tensor(self.levels, device=codes.device)
        digits = (codes.unsqueeze(-1) // self.basis) % levels
        return (digits.to(self.half_width.dtype) - self.half_width) / self.half_width

    @property
    def codebook(self) -> torch.Tensor:
        """(K, C) the implicit codebook: every grid point, row k the grid value of code k."""
        return self.grid_from_codes(torch.arange(self.k, device=self.basis.device))

    @torch.no_grad()
    def assign_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M,) int64 code of each row."""
        return self.codes_from_grid(torch.round(self.bound(z_e.float())) / self.half_width)

    def forward(
        self, z_e: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(M, C) -> z_q (straight-through), codes (M,), and zero codebook/commitment losses.

        FSQ needs neither loss: the grid is fixed and the bound keeps z_e near it.
        """
        z_q = self.quantize(z_e.float())
        codes = self.codes_from_grid(z_q.detach())
        zero = torch.zeros((), device=z_e.device, dtype=z_q.dtype)
        return z_q.to(z_e.dtype), codes, {"codebook": zero, "commitment": zero}
