"""Memory estimates checked before allocating: a size that cannot fit is one line naming the
flag, not an allocation error (or the kernel's OOM killer) minutes later.

The estimates are deliberately rough upper bounds (float32, a few live copies); they only
need to catch sizes that are out by orders of magnitude.
"""

from __future__ import annotations

import os

import torch

from geovq import GeovqError

FLOAT = 4  # bytes
ADAM_COPIES = 4  # weights, gradients, two moments


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation may use: free GPU memory, or MemAvailable (else total RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require(nbytes: float, device: torch.device, what: str, fix: str) -> None:
    """GeovqError when ``nbytes`` cannot fit in the device's available memory."""
    available = available_bytes(device)
    if nbytes > available:
        raise GeovqError(
            f"{what} needs about {_human(nbytes)} but {device.type} has {_human(available)} "
            f"available; {fix}"
        )


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1024 or unit == "PB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} PB"


def images_bytes(n: int, image_shape: tuple[int, ...], copies: int = 4) -> float:
    """``n`` float images of (C, H, W) held ``copies`` times (decode, sigmoid, grid, PNG)."""
    channels, height, width = image_shape
    return float(n) * channels * height * width * FLOAT * copies


def training_bytes(parameters: float, activations_per_example: float, batch: int) -> float:
    """Adam training: four copies of the weights plus a batch's activations (and gradients)."""
    return parameters * FLOAT * ADAM_COPIES + 2 * activations_per_example * batch * FLOAT


def pixelcnn_parameters(hidden: int, layers: int, num_codes: int) -> float:
    """About 50 h^2 weights per gated layer (vertical, horizontal, gates), plus the head."""
    return layers * 50.0 * hidden * hidden + 2.0 * hidden * num_codes + hidden * hidden


def pixelcnn_activations(hidden: int, layers: int, positions: int, num_codes: int) -> float:
    """Floats one example keeps through a forward pass: a few (h, H, W) maps per layer."""
    return positions * (layers * 8.0 * hidden + num_codes)
