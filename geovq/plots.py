"""PNG figures for reports: image rows, sample grids, code usage and rate-distortion curves.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no display, no
global figure state). Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from torchvision.utils import make_grid

DPI = 100
# Families drawn as separate markers rather than a curve: end-to-end models, one point each.
MARKER_FAMILIES = ("vq-vae",)
QUALITATIVE = colormaps["tab10"]
LINE_STYLES = ("-", "--", ":", "-.")
LABEL_SIZE = 8
LABEL_WRAP = 28  # characters per line of a row label
LABEL_INCH_PER_CHAR = 0.075  # at LABEL_SIZE points


def save_image_rows(
    rows: list[tuple[str, torch.Tensor]], path: str | Path, *, max_images: int = 10
) -> Path:
    """One labelled row per (label, images (N, C, H, W) in [0, 1]), first max_images each.

    Typical rows: originals, VAE reconstructions, then each quantization's reconstructions.
    Labels sit in a column of their own, wrapped, so long source names are never cut off.
    """
    if not rows:
        raise ValueError("save_image_rows needs at least one row")
    for label, images in rows:
        _check_images(images, what=f"row {label!r}")
    columns = min(max_images, max(images.shape[0] for _, images in rows))
    labels = [textwrap.fill(label, LABEL_WRAP) for label, _ in rows]
    label_width = LABEL_INCH_PER_CHAR * max(
        len(line) for text in labels for line in text.split("\n")
    )
    tile = 0.9
    width, height = label_width + tile * columns + 0.1, tile * len(rows) + 0.1
    figure = _new_figure((width, height))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, text, (_, images) in zip(axes, labels, rows, strict=True):
        for column, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < images.shape[0]:
                _show_image(ax, images[column])
            else:
                ax.set_axis_off()
        row_axes[0].set_ylabel(text, rotation=0, ha="right", va="center", fontsize=LABEL_SIZE)
    figure.subplots_adjust(
        left=label_width / width, right=0.995, bottom=0.005, top=0.995, wspace=0.04, hspace=0.06
    )
    return _save(figure, path)


def save_sample_rows(
    rows: list[tuple[str, torch.Tensor]],
    path: str | Path,
    *,
    nrow: int = 8,
    title: str | None = None,
) -> Path:
    """One titled grid per (label, images (N, C, H, W) in [0, 1]), tiled nrow per row by
    torchvision's make_grid; e.g. prior samples above samples of uniform random codes."""
    if not rows:
        raise ValueError("save_sample_rows needs at least one row")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    grids = []
    for label, images in rows:
        _check_images(images, what=f"row {label!r}")
        grids.append(make_grid(images.detach().cpu().float(), nrow=nrow, padding=2, pad_value=1.0))
    scale = 2.0 / DPI  # inches per pixel: every image pixel drawn as 2 x 2
    heights = [grid.shape[1] * scale + 0.3 for grid in grids]
    width = max(grid.shape[2] for grid in grids) * scale
    figure = _new_figure((width, sum(heights) + (0.3 if title else 0.0)))
    axes = figure.subplots(len(grids), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, grid, (label, _) in zip(axes[:, 0], grids, rows, strict=True):
        ax.set_axis_off()
        _show_image(ax, grid)
        ax.set_title(label, fontsize=LABEL_SIZE)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_code_usage(histograms: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Sorted codeword usage per quantization, name -> counts (K,) or (L, K) (flattened).

    The y axis is each entry's share of all assignments, on a log scale; unused entries have
    no point and are counted in the legend. Series differ by colour and, past ten, line style.
    """
    if not histograms:
        raise ValueError("save_code_usage needs at least one histogram")
    figure = _new_figure((7.0, 4.0))
    ax = figure.add_subplot()
    for index, (name, counts) in enumerate(histograms.items()):
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
        color, style = _series_style(index)
        ax.plot(
            ranks,
            shares[:used].numpy(),
            drawstyle="steps-mid",
            label=label,
            color=color,
            linestyle=style,
        )
    ax.set_yscale("log")
    ax.set_xlabel("codeword rank (most used first)")
    ax.set_ylabel("share of assignments")
    ax.set_title("Code usage")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=LABEL_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(figure, path)


def save_rate_distortion(points: list[dict], path: str | Path) -> Path:
    """MSE per pixel against bits per image on a log2 axis: a curve per post-hoc family
    (circles), stars for VQ-VAEs; every point labelled with its source.

    Each point is {"name", "family", "bits_per_image", "mse"} (+ "sweep": True for K-sweep
    points, labelled by their K alone).
    """
    if not points:
        raise ValueError("save_rate_distortion needs at least one point")
    families: dict[str, list[dict]] = {}
    for point in points:
        _check_rate_point(point)
        families.setdefault(point["family"], []).append(point)
    figure = _new_figure((8.0, 5.0))
    ax = figure.add_subplot()
    for index, (family, members) in enumerate(families.items()):
        members = sorted(members, key=lambda point: point["bits_per_image"])
        bits = [point["bits_per_image"] for point in members]
        mse = [point["mse"] for point in members]
        color, style = _series_style(index)
        if family.lower() in MARKER_FAMILIES:
            ax.scatter(bits, mse, marker="*", s=160, color=color, label=family, zorder=3)
        else:
            ax.plot(bits, mse, marker="o", color=color, linestyle=style, label=family)
    _log2_axis(ax, [point["bits_per_image"] for point in points])
    _label_points(ax, families)
    ax.set_xlabel("bits per image")
    ax.set_ylabel("MSE per pixel")
    ax.set_title("Rate-distortion")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=LABEL_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(figure, path)


def _label_points(ax, families: dict[str, list[dict]]) -> None:
    """Label every point with its source (K alone for sweep points). Labels of points that
    (nearly) coincide are stacked, alternately above and below; a repeated label is drawn once.
    """
    low, high = ax.get_ylim()
    pad = 0.12 * (high - low)
    ax.set_ylim(low - pad, high + pad)  # room for stacked labels inside the axes
    placed: list[tuple[float, float, str]] = []
    for index, members in enumerate(families.values()):
        color, _ = _series_style(index)
        for point in members:
            bits, mse, text = point["bits_per_image"], point["mse"], _point_label(point)
            near = [
                other
                for other in placed
                if abs(math.log2(other[0] / bits)) < 0.15
                and abs(other[1] - mse) < 0.04 * (high - low)
            ]
            if any(other[2] == text for other in near):
                continue
            placed.append((bits, mse, text))
            step = len(near) // 2 + 1
            offset = 8 * (step - 1) + 3 if len(near) % 2 == 0 else -8 * step - 3
            ax.annotate(
                text,
                (bits, mse),
                textcoords="offset points",
                xytext=(5, offset),
                fontsize=6.5,
                color=color,
            )


def _series_style(index: int) -> tuple[tuple, str]:
    """A qualitative colour (tab10) and, for every further ten series, another line style."""
    return QUALITATIVE(index % 10), LINE_STYLES[(index // 10) % len(LINE_STYLES)]


def _point_label(point: dict) -> str:
    if point.get("sweep") and "k" in point:
        return f"K={point['k']}"
    return point["name"].removeprefix("quant/").removeprefix("vqvae/")


def _log2_axis(ax, values: list[float]) -> None:
    """Log2 x axis with ticks at powers of two written as plain numbers (16, 32, 64, ...)."""
    ax.set_xscale("log", base=2)
    low, high = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    ax.set_xlim(2.0 ** (low - 0.3), 2.0 ** (high + 0.3))
    ax.xaxis.set_major_locator(FixedLocator([2.0**e for e in range(low, high + 1)]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """Render to memory, then write atomically: a reader never sees half a PNG."""
    from geovq.rundir import atomic_write_bytes

    path = Path(path)
    buffer = io.BytesIO()
    # "tight" grows the canvas to hold what sticks out (a legend outside the axes, labels).
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.05)
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
