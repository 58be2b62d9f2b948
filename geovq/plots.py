"""PNG figures for reports: image rows, sample grids, code usage and rate-distortion curves.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no display, no
global figure state). Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
# Families drawn as separate markers rather than a curve: end-to-end models, one point each.
MARKER_FAMILIES = ("vq-vae",)


def save_image_rows(
    rows: list[tuple[str, torch.Tensor]], path: str | Path, *, max_images: int = 10
) -> Path:
    """One labelled row per (label, images (N, C, H, W) in [0, 1]), first max_images each.

    Typical rows: originals, VAE reconstructions, then each quantization's reconstructions.
    """
    if not rows:
        raise ValueError("save_image_rows needs at least one row")
    for label, images in rows:
        _check_images(images, what=f"row {label!r}")
    columns = min(max_images, max(images.shape[0] for _, images in rows))
    figure = _new_figure((1.1 * columns + 1.2, 1.1 * len(rows)))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, (label, images) in zip(axes, rows, strict=True):
        for column, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < images.shape[0]:
                _show_image(ax, images[column])
            else:
                ax.set_axis_off()
        row_axes[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    figure.subplots_adjust(
        left=1.2 / (1.1 * columns + 1.2),
        right=0.99,
        bottom=0.01,
        top=0.99,
        wspace=0.05,
        hspace=0.05,
    )
    return _save(figure, path)


def save_sample_grid(
    images: torch.Tensor, path: str | Path, *, nrow: int = 8, title: str | None = None
) -> Path:
    """Images (N, C, H, W) in [0, 1] tiled nrow per row with 2-pixel padding, like make_grid."""
    _check_images(images, what="images")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    grid = _tile(images, nrow=nrow)
    height, width = grid.shape[1], grid.shape[2]
    scale = max(4.0 / width, 3.0 / DPI)
    title_space = 0.4 if title else 0.0
    figure = _new_figure((width * scale, height * scale + title_space))
    ax = figure.add_axes((0.0, 0.0, 1.0, height * scale / (height * scale + title_space)))
    ax.set_axis_off()
    _show_image(ax, grid)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_code_usage(histograms: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Sorted codeword usage per quantization, name -> counts (K,) or (L, K) (flattened).

    The y axis is each entry's share of all assignments, on a log scale; unused entries have
    no point and are counted in the legend.
    """
    if not histograms:
        raise ValueError("save_code_usage needs at least one histogram")
    figure = _new_figure((7.0, 4.0))
    ax = figure.add_subplot()
    for name, counts in histograms.items():
        flat = counts.detach().cpu().double().flatten()
        if flat.numel() == 0:
            raise ValueError(f"histogram {name!r} is empty")
        total = flat.sum().item()
        if total <= 0:
            raise ValueError(f"histogram {name!r} has no counts")
        shares = torch.sort(flat, descending=True).values / total
        used = int((shares > 0).sum().item())
        ranks = np.arange(1, used + 1)
        label = f"{name} ({used}/{flat.numel()} used)"
        ax.plot(ranks, shares[:used].numpy(), drawstyle="steps-mid", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("codeword rank (most used first)")
    ax.set_ylabel("share of assignments")
    ax.set_title("Code usage")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def save_rate_distortion(points: list[dict], path: str | Path) -> Path:
    """MSE per pixel against bits per image (log x): a curve per family, markers for VQ-VAEs.

    Each point is {"name", "family", "bits_per_image", "mse"}.
    """
    if not points:
        raise ValueError("save_rate_distortion needs at least one point")
    families: dict[str, list[dict]] = {}
    for point in points:
        _check_rate_point(point)
        families.setdefault(point["family"], []).append(point)
    figure = _new_figure((7.0, 4.5))
    ax = figure.add_subplot()
    for index, (family, members) in enumerate(families.items()):
        members = sorted(members, key=lambda point: point["bits_per_image"])
        bits = [point["bits_per_image"] for point in members]
        mse = [point["mse"] for point in members]
        color = f"C{index % 10}"
        if family.lower() in MARKER_FAMILIES:
            ax.scatter(bits, mse, marker="*", s=120, color=color, label=family, zorder=3)
            for point in members:
                ax.annotate(
                    point["name"],
                    (point["bits_per_image"], point["mse"]),
                    textcoords="offset points",
                    xytext=(5, 5),
                    fontsize=7,
                )
        else:
            ax.plot(bits, mse, marker="o", color=color, label=family)
    ax.set_xscale("log")
    ax.set_xlabel("bits per image")
    ax.set_ylabel("MSE per pixel")
    ax.set_title("Rate-distortion")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """Render to memory, then write atomically: a reader never sees half a PNG."""
    from geovq.rundir import atomic_write_bytes

    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _check_images(images: torch.Tensor, *, what: str) -> None:
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"{what}: need non-empty (N, C, H, W) images, got {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{what}: need 1 or 3 channels, got {images.shape[1]}")


def _check_rate_point(point: dict) -> None:
    missing = {"name", "family", "bits_per_image", "mse"} - point.keys()
    if missing:
        raise ValueError(f"rate-distortion point {point!r} lacks {sorted(missing)}")
    if point["bits_per_image"] <= 0:
        raise ValueError(f"point {point['name']!r}: bits_per_image must be > 0 for a log axis")


def _show_image(ax, image: torch.Tensor) -> None:
    """Draw one (C, H, W) image in [0, 1]: grayscale for one channel, RGB for three."""
    pixels = image.detach().cpu().float().clamp(0.0, 1.0)
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(pixels.permute(1, 2, 0).numpy(), interpolation="nearest")


def _tile(images: torch.Tensor, *, nrow: int, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) -> (C, rows*(H+p)+p, nrow*(W+p)+p) with white padding between tiles."""
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    grid = torch.ones(
        channels, rows * (height + padding) + padding, columns * (width + padding) + padding
    )
    for index, image in enumerate(images.detach().cpu().float()):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid
