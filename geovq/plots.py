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
from matplotlib.transforms import Bbox
from torchvision.utils import make_grid

DPI = 100
# Rate-distortion: a colour per method, post hoc as circles (squares, triangles for further
# VAEs), end-to-end models as stars (VQ-VAE) and diamonds (FSQ).
METHODS = (
    "euclidean",
    "w2",
    "geodesic",
    "geodesic-bary",
    "scalar",
    "transform",
    "vq-vae",
    "fsq",
)
POSTHOC = METHODS[:6]
METHOD_COLOURS = dict(
    zip(
        METHODS,
        (
            "tab:blue",
            "tab:orange",
            "tab:green",
            "tab:olive",
            "tab:purple",
            "tab:brown",
            "tab:red",
            "black",
        ),
        strict=True,
    )
)
POSTHOC_MARKERS = ("o", "s", "^", "v")
END_TO_END_MARKERS = {"vq-vae": ("*", 13), "fsq": ("D", 7)}
STYLE_KEY = "filled, solid: refit decoder\nhollow, dashed: the VAE's decoder"
RATE_AXES = {
    "nominal": "bits per image, nominal (L log2 K, a fixed-length code)",
    "prior": "bits per image, prior rate (the prior's NLL of the codes, entropy-coded)",
}
LABEL_POINT_SIZE = 6.5
LABEL_GAP_PX = 10.0  # from a point to its label (clear of its marker box)
LABEL_STEPS = 60  # label heights tried above and below a point
MARKER_PX = 9.0  # half the side of the box a marker keeps free of labels (a star's radius)
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


def save_rate_distortion(points: list[dict], path: str | Path, *, rate: str = "nominal") -> Path:
    """MSE per pixel against bits per image (log2 axis); see ``rate_distortion_figure``."""
    return _save(rate_distortion_figure(points, rate=rate), path)


def rate_distortion_figure(points: list[dict], *, rate: str = "nominal") -> Figure:
    """MSE per pixel against bits per image on a log2 axis, every point labelled with its
    source, the legend outside the axes.

    Each point is {"name", "family", "bits_per_image", "mse"}, optionally "method" (colour:
    one per euclidean, w2, geodesic, geodesic-bary, scalar, transform, vq-vae, fsq), "refit"
    (filled marker and solid line; hollow and dashed through the VAE's decoder), "vae" (marker shape
    of a post-hoc family, one per VAE) and "sweep": True (a K-sweep point, labelled by its K).
    A family with several points is a curve. ``rate`` names the x axis: "nominal" (L log2 K)
    or "prior" (the prior's NLL).
    """
    if not points:
        raise ValueError("rate_distortion_figure needs at least one point")
    if rate not in RATE_AXES:
        raise ValueError(f"rate must be one of {sorted(RATE_AXES)}, got {rate!r}")
    families: dict[str, list[dict]] = {}
    for point in points:
        _check_rate_point(point)
        families.setdefault(point["family"], []).append(point)
    vaes = list(dict.fromkeys(p.get("vae", "") for p in points if p.get("method") in POSTHOC))
    figure = _new_figure((8.0, 5.5))
    ax = figure.add_subplot()
    ordered = sorted(families.items(), key=lambda item: _family_order(item[1][0]))
    colours = {}
    for index, (family, members) in enumerate(ordered):
        members = sorted(members, key=lambda point: point["bits_per_image"])
        style = _point_style(members[0], index, vaes)
        colours[family] = style["color"]
        bits = [point["bits_per_image"] for point in members]
        mse = [point["mse"] for point in members]
        ax.plot(
            bits,
            mse,
            linestyle=style["linestyle"] if len(members) > 1 else "none",
            marker=style["marker"],
            markersize=style["size"],
            color=style["color"],
            markerfacecolor=style["color"] if style["filled"] else "white",
            markeredgewidth=1.2,
            label=family,
            zorder=3 if style["filled"] else 4,  # hollow on top: a filled twin stays visible
        )
    _log2_axis(ax, [point["bits_per_image"] for point in points])
    _log_mse_axis(ax, [point["mse"] for point in points])
    ax.set_xlabel(RATE_AXES[rate])
    ax.set_ylabel("MSE per pixel (log scale)")
    ax.set_title(f"Rate-distortion ({rate} rate)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(
        fontsize=LABEL_SIZE,
        title=STYLE_KEY,
        title_fontsize=LABEL_SIZE,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    labelled = [(point, colours[family]) for family, members in ordered for point in members]
    _label_points(ax, labelled)
    return figure


def _family_order(point: dict) -> tuple:
    """Post hoc by method, VAE and refit first; then VQ-VAE, FSQ; unknown methods last."""
    method = point.get("method", "")
    rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return (rank, point.get("vae", ""), not point.get("refit", False), point["family"])


def _point_style(point: dict, index: int, vaes: list[str]) -> dict:
    """Colour by method, marker by kind (post hoc: one shape per VAE; VQ-VAE star; FSQ
    diamond), filled with a solid line through a refit decoder, hollow and dashed without."""
    method = point.get("method")
    if method not in METHOD_COLOURS:  # a point that does not say: a colour per family
        color, linestyle = _series_style(index)
        return {"color": color, "linestyle": linestyle, "marker": "o", "size": 6, "filled": True}
    if method in END_TO_END_MARKERS:
        marker, size = END_TO_END_MARKERS[method]
        return {
            "color": METHOD_COLOURS[method],
            "linestyle": "-",
            "marker": marker,
            "size": size,
            "filled": True,
        }
    refit = bool(point.get("refit"))
    vae_index = vaes.index(point.get("vae", "")) if point.get("vae", "") in vaes else 0
    return {
        "color": METHOD_COLOURS[method],
        "linestyle": "-" if refit else "--",
        "marker": POSTHOC_MARKERS[vae_index % len(POSTHOC_MARKERS)],
        "size": 7,
        "filled": refit,
    }


def _label_points(ax, labelled: list[tuple[dict, tuple]]) -> list:
    """Label every (point, colour) with its source (K alone for sweep points), greedily: each
    label goes right of its point (left near the right edge) at the nearest height where it
    covers no other label and no marker, inside the axes, with a thin leader line when moved
    off its point. A label repeated at the same place is drawn once. Returns the labels."""
    renderer = ax.figure.canvas.get_renderer()
    to_display, to_data = ax.transData.transform, ax.transData.inverted().transform
    area = ax.get_window_extent(renderer)
    at = {id(p): to_display((p["bits_per_image"], p["mse"])) for p, _ in labelled}
    markers = [
        Bbox.from_bounds(x - MARKER_PX, y - MARKER_PX, 2 * MARKER_PX, 2 * MARKER_PX)
        for x, y in at.values()
    ]
    boxes: list[Bbox] = []
    drawn: list[tuple[str, tuple[float, float]]] = []
    artists = []
    order = sorted(labelled, key=lambda item: (item[0]["bits_per_image"], item[0]["mse"]))
    for point, colour in order:
        text = _point_label(point)
        anchor = (point["bits_per_image"], point["mse"])
        x, y = at[id(point)]
        if any(t == text and _near((x, y), xy) for t, xy in drawn):
            continue
        if point.get("sweep") and any(  # a run's own point, named in full, is there already
            not other.get("sweep") and _near((x, y), at[id(other)]) for other, _ in labelled
        ):
            continue
        drawn.append((text, (x, y)))
        artist = ax.text(
            *anchor,
            text,
            fontsize=LABEL_POINT_SIZE,
            color=colour,
            va="center",
            zorder=5,
            # legible where it crosses a curve
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.75, "pad": 0.4},
        )
        extent = artist.get_window_extent(renderer)
        width, height = extent.width, extent.height
        # right of the point, or left where the label would leave the axes (into the legend)
        right = x + LABEL_GAP_PX + width <= area.x1
        left_edge = x + LABEL_GAP_PX if right else x - LABEL_GAP_PX - width
        box = _free_box(left_edge, y, width, height, boxes + markers, area)
        boxes.append(box)
        centre = (box.y0 + box.y1) / 2
        artist.set_position(to_data((box.x0, centre)))
        if abs(centre - y) > height / 2:
            ax.annotate(
                "",
                xy=anchor,
                xytext=to_data((box.x0 if right else box.x1, centre)),
                arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.7},
            )
        artists.append(artist)
    return artists


def _near(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two points in display pixels close enough for one marker to hide the other."""
    return abs(a[0] - b[0]) <= MARKER_PX and abs(a[1] - b[1]) <= MARKER_PX


def _free_box(x: float, y: float, width: float, height: float, taken: list, area) -> Bbox:
    """The box (x, y ± height / 2 + steps of a line) nearest y that overlaps nothing in
    ``taken`` and lies inside ``area``; the least crowded such box if none is free."""
    best, best_overlaps = None, None
    line = height + 1.0  # touching boxes count as overlapping
    for step in range(LABEL_STEPS):
        for sign in (1, -1) if step else (1,):
            centre = y + sign * step * line
            box = Bbox.from_bounds(x, centre - height / 2, width, height)
            if box.y0 < area.y0 or box.y1 > area.y1:
                continue
            overlaps = sum(box.overlaps(other) for other in taken)
            if overlaps == 0:
                return box
            if best_overlaps is None or overlaps < best_overlaps:
                best, best_overlaps = box, overlaps
    return best if best is not None else Bbox.from_bounds(x, y - height / 2, width, height)


def _series_style(index: int) -> tuple[tuple, str]:
    """A qualitative colour (tab10) and, for every further ten series, another line style."""
    return QUALITATIVE(index % 10), LINE_STYLES[(index // 10) % len(LINE_STYLES)]


def _point_label(point: dict) -> str:
    if point.get("sweep") and "k" in point:
        return f"K={point['k']}"
    return point["name"].removeprefix("quant/").removeprefix("vqvae/")


def _log2_axis(ax, values: list[float]) -> None:
    """Log2 x axis with ticks written as plain numbers: at powers of two (16, 32, 64, ...), and
    also halfway (24, 48, ...) when the points span less than two octaves."""
    ax.set_xscale("log", base=2)
    low, high = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    ax.set_xlim(2.0 ** (low - 0.3), 2.0 ** (high + 0.3))
    ticks = [2.0**e for e in range(low, high + 1)]
    if high - low < 2:
        ticks = sorted(ticks + [1.5 * 2.0**e for e in range(low, high)])
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _log_mse_axis(ax, values: list[float]) -> None:
    """Log y axis (low and high rates differ tenfold in MSE, so a linear axis crowds the high
    rate's points together), ticks at 1, 2 and 5 per decade written as plain decimals."""
    ax.set_yscale("log")
    low, high = min(values), max(values)
    ax.set_ylim(low / 1.25, high * 1.25)
    ticks = [
        step * 10.0**e
        for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
        for step in (1, 2, 5)
        if low / 1.25 <= step * 10.0**e <= high * 1.25
    ]
    if len(ticks) < 3:  # a narrow range: finer steps
        ticks = [
            step * 10.0**e
            for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
            for step in range(1, 10)
            if low / 1.25 <= step * 10.0**e <= high * 1.25
        ]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


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
