"""Post-hoc transform coding of the whole latent (Huang & Schultheiss 1963; Goyal 2001,
"Theoretical foundations of transform coding"): rotate mu onto its principal axes, give each
axis b bits by greedy marginal return on its exact Lloyd–Max error, and quantize each axis
to 2^b levels.

A chunk codebook codes each position on its own; neighbouring positions of a spatial latent
are correlated, and the rotation is what lets the code spend bits on that shared structure
(where the variance is) instead of on every position alike.

The code is global, but it travels as every other source's does: an image's B = L log2 K bits
are its axes' level indices written one after another (axis 0 first, each index's most
significant bit first), cut into L symbols of log2 K bits, so prior, sample and compare read
an (N, L) grid of symbols below K as from any codebook.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from geovq.quant.scalar import lloyd_max_1d, nearest_level

MAX_BITS = 8  # per axis: 256 levels (the level table is (D, 2^MAX_BITS))


@dataclass
class TransformCode:
    """mean (D,), basis (D, D) with the principal axes as columns (largest variance first),
    bits (D,) per axis, levels (D, 2^MAX_BITS): axis i's 2^bits[i] sorted reconstruction
    values, padded with its last; sigma (D,) the fit's mean sigma, the decoded Gaussians'
    (the code carries mu only). All float64 but bits (int64)."""

    mean: Tensor
    basis: Tensor
    bits: Tensor
    levels: Tensor
    sigma: Tensor
    symbol_bits: int

    @property
    def k(self) -> int:
        return 2**self.symbol_bits

    @property
    def symbols(self) -> int:
        return int(self.bits.sum()) // self.symbol_bits

    def tensors(self) -> dict[str, Tensor]:
        return {
            "mean": self.mean,
            "basis": self.basis,
            "bits": self.bits,
            "levels": self.levels,
            "sigma": self.sigma,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], k: int) -> TransformCode:
        """The code saved by ``tensors``; ValueError if the parts do not fit together."""
        try:
            code = cls(
                *(tensors[name].double() for name in ("mean", "basis")),
                tensors["bits"].to(torch.int64),
                *(tensors[name].double() for name in ("levels", "sigma")),
                symbol_bits=_symbol_bits(k),
            )
        except KeyError as missing:
            raise ValueError(f"the transform codebook lacks {missing}") from None
        dim = code.mean.shape[0]
        shapes_fit = (
            code.basis.shape == (dim, dim)
            and code.bits.shape == (dim,)
            and code.levels.shape == (dim, 2**MAX_BITS)
            and code.sigma.shape == (dim,)
        )
        if not shapes_fit or int(code.bits.sum()) % code.symbol_bits or code.bits.min() < 0:
            raise ValueError("the transform codebook's parts do not fit together")
        if code.bits.max() > MAX_BITS:
            raise ValueError(f"the transform codebook gives an axis more than {MAX_BITS} bits")
        return code

    def to(self, device: torch.device | str) -> TransformCode:
        moved = {name: t.to(device) for name, t in self.tensors().items()}
        return TransformCode(**moved, symbol_bits=self.symbol_bits)


def check_budget(dim: int, symbols: int, k: int) -> None:
    """ValueError unless K is a power of two >= 2 and L log2 K bits fit D axes of MAX_BITS."""
    bits = symbols * _symbol_bits(k)
    if bits > dim * MAX_BITS:
        raise ValueError(
            f"transform coding spends L log2 K = {bits} bits but {dim} latent dimensions hold "
            f"at most {dim * MAX_BITS} ({MAX_BITS} each); use a smaller --k or fewer --chunks"
        )


def fit_transform(mu: Tensor, sigma: Tensor, symbols: int, k: int) -> TransformCode:
    """The transform code of latents mu, sigma (N, D) spending L log2 K bits per image
    (L = symbols): principal axes of mu, bits by greedy allocation, Lloyd–Max levels.

    Greedy allocation (each bit to the axis whose squared error it lowers most) is optimal
    for errors convex in the bits (Fox 1966, "Discrete optimization via marginal analysis"),
    as 1-d optimal quantizers' are; the error it minimises is that of mu in the latent space.
    """
    if mu.ndim != 2 or mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma must be (N, D) alike, got {tuple(mu.shape)}")
    n, dim = mu.shape
    if n < 2:
        raise ValueError("transform coding needs at least 2 latents to fit")
    check_budget(dim, symbols, k)
    x = mu.detach().cpu().double()
    mean = x.mean(0)
    basis = principal_axes(x - mean)
    components = (x - mean) @ basis
    bits, levels = allocate_bits(components, symbols * _symbol_bits(k))
    sigma_mean = sigma.detach().cpu().double().mean(0)
    return TransformCode(mean, basis, bits, levels, sigma_mean, _symbol_bits(k))


def principal_axes(centred: Tensor) -> Tensor:
    """Orthonormal columns (D, D), the eigenvectors of the covariance by eigenvalue, largest
    first, each signed so that its largest entry is positive (one answer on every machine)."""
    covariance = centred.T @ centred / max(centred.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)
    vectors = vectors[:, torch.argsort(values, descending=True, stable=True)]
    top = vectors.abs().argmax(0)
    signs = torch.sign(vectors[top, torch.arange(vectors.shape[1])])
    return vectors * torch.where(signs == 0, 1.0, signs)


def allocate_bits(components: Tensor, total_bits: int) -> tuple[Tensor, Tensor]:
    """bits (D,) summing to total_bits and levels (D, 2^MAX_BITS) for components (N, D).

    Each axis's error at b bits is the least squared error of 2^b levels (lloyd_max_1d);
    ties go to the lower axis, so the allocation is deterministic."""
    dim = components.shape[1]
    if total_bits > dim * MAX_BITS:
        raise ValueError(f"{total_bits} bits do not fit {dim} axes of {MAX_BITS} bits")
    columns = [components[:, axis].contiguous() for axis in range(dim)]
    current = [_quantizer(column, 0) for column in columns]
    following = [_quantizer(column, 1) for column in columns]
    bits = [0] * dim
    # a max-heap of (gain, axis) as (-gain, axis)
    heap = [(-(current[a][0] - following[a][0]), a) for a in range(dim)]
    heapq.heapify(heap)
    for _ in range(total_bits):
        _, axis = heapq.heappop(heap)
        bits[axis] += 1
        current[axis] = following[axis]
        if bits[axis] < MAX_BITS:
            following[axis] = _quantizer(columns[axis], bits[axis] + 1)
            heapq.heappush(heap, (-(current[axis][0] - following[axis][0]), axis))
    levels = torch.stack([_padded(level_values) for _, level_values in current])
    return torch.tensor(bits, dtype=torch.int64), levels


def _quantizer(column: Tensor, bits: int) -> tuple[float, Tensor]:
    """(mean squared error, sorted levels) of the optimal 2^bits-level quantizer of column."""
    levels = column.mean().reshape(1) if bits == 0 else lloyd_max_1d(column, 2**bits)
    chosen = levels[nearest_level(column, levels)]
    return float(((column - chosen) ** 2).mean()), levels


def _padded(levels: Tensor) -> Tensor:
    return torch.cat([levels, levels[-1:].expand(2**MAX_BITS - len(levels))])


def level_indices(code: TransformCode, mu: Tensor) -> Tensor:
    """(N, D) int64: each axis's level index of latents mu (N, D)."""
    components = (mu.double().to(code.mean.device) - code.mean) @ code.basis
    columns = [
        nearest_level(components[:, axis].contiguous(), code.levels[axis, : 2 ** int(b)])
        for axis, b in enumerate(code.bits.tolist())
    ]
    return torch.stack(columns, dim=1)


def encode(code: TransformCode, mu: Tensor) -> Tensor:
    """Codes (N, L) int64, symbols below K, of latents mu (N, D)."""
    return pack_bits(level_indices(code, mu), code.bits, code.symbol_bits)


def decode(code: TransformCode, codes: Tensor) -> Tensor:
    """Latents (N, D) float64 of codes (N, L): each axis's level, rotated back."""
    indices = unpack_bits(codes.to(code.mean.device), code.bits, code.symbol_bits)
    components = torch.gather(code.levels, 1, indices.T).T
    return components @ code.basis.T + code.mean


def pack_bits(indices: Tensor, bits: Tensor, symbol_bits: int) -> Tensor:
    """(N, D) indices, axis i below 2^bits[i] -> (N, L) symbols of symbol_bits bits: the
    indices' bits in order (axis 0 first, most significant first), cut every symbol_bits."""
    stream = []
    for axis, width in enumerate(bits.tolist()):
        for place in range(width - 1, -1, -1):
            stream.append((indices[:, axis] >> place) & 1)
    if len(stream) % symbol_bits:
        raise ValueError(f"{len(stream)} bits are not whole symbols of {symbol_bits} bits")
    weights = 2 ** torch.arange(symbol_bits - 1, -1, -1, device=indices.device)
    stream_bits = torch.stack(stream, dim=1).reshape(indices.shape[0], -1, symbol_bits)
    return (stream_bits * weights).sum(-1)


def unpack_bits(codes: Tensor, bits: Tensor, symbol_bits: int) -> Tensor:
    """The inverse of pack_bits: (N, L) symbols -> (N, D) level indices."""
    codes = codes.to(torch.int64)
    places = torch.arange(symbol_bits - 1, -1, -1, device=codes.device)
    stream = ((codes.unsqueeze(-1) >> places) & 1).flatten(1)
    if stream.shape[1] != int(bits.sum()):
        raise ValueError(
            f"codes hold {stream.shape[1]} bits but the transform code has {int(bits.sum())}"
        )
    columns, start = [], 0
    for width in bits.tolist():
        weights = 2 ** torch.arange(width - 1, -1, -1, device=codes.device)
        columns.append((stream[:, start : start + width] * weights).sum(1))
        start += width
    return torch.stack(columns, dim=1)


def _symbol_bits(k: int) -> int:
    bits = round(math.log2(k)) if k >= 2 else 0
    if k < 2 or 2**bits != k:
        raise ValueError(
            f"transform codes are bit strings cut into symbols, so K must be a power of two "
            f">= 2; got --k {k} (e.g. --k 256)"
        )
    return bits
