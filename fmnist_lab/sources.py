"""The task a run learns: where its images come from, and what is done to them.

Sources (`data=`): Fashion-MNIST from its four IDX files; scikit-learn's bundled 8x8
handwritten digits (1,797 images, nothing to download); any folder of the four MNIST-format
IDX files (MNIST, KMNIST, your own). Each is read and checked once per process and gives
uint8 images at their native size and integer labels.

On top of any source, three `data.*` keys change the task, never the network's shape:
- `classes`: keep these classes, relabelled 0..k-1 in the order given (the output layer has k);
- `label_noise`: a fraction of training labels replaced by another class, drawn uniformly;
- `resolution`: images averaged down to r x r, then resized back: less information per image.

How the images are split and served is fmnist_lab.data's concern, not this module's.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCES = ("fashion_mnist", "digits", "idx")
INPUT_SIZE = 28  # every network of fmnist_lab.models takes 28x28 images
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path("data")
FASHION_COUNTS = {"train": 60_000, "test": 10_000}
REMEDY = "run `make setup`, or pass data.root=FOLDER holding the four Fashion-MNIST IDX files"
IDX_REMEDY = "data=idx needs data.root=FOLDER holding the four MNIST-format IDX files"
# scikit-learn's digits come as one set: this share of every class is the test set, held out
# by data.split_seed before the validation split is carved from the rest.
DIGITS_TEST_FRACTION = 0.2


class DataError(Exception):
    """A data problem a user can fix; its message is one line naming the file and the remedy."""


# ---------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path, remedy: str = REMEDY) -> torch.Tensor:
    """Read one IDX file (gzipped or not) into a uint8 tensor, checking its header."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {remedy}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: unreadable, truncated or corrupt ({e}); {remedy}") from None

    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file; {remedy}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        magic = struct.unpack(">I", raw[:4])[0]
        raise DataError(f"{path}: bad magic number {magic} (expected 2049 or 2051); {remedy}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header; {remedy}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header} bytes of data, header says {expected} "
            f"(shape {shape}): truncated or corrupt; {remedy}"
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(shape)


def write_idx(path: str | Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzipped when the name ends in .gz)."""
    path = Path(path)
    data = data.to(torch.uint8).contiguous()
    header = struct.pack(">HBB", 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    payload = header + data.numpy().tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def file_in(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _holds_dataset(folder: Path) -> bool:
    return all(file_in(folder, stem) for stem in FILES.values())


def _check_folder(folder: Path, remedy: str) -> Path:
    """`folder`, when it is a readable folder holding the four files; else a DataError."""
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder does not exist; {remedy}")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"{folder}: data folder is not readable; {remedy}")
    for stem in FILES.values():
        path = file_in(folder, stem)
        if path is None:
            raise DataError(f"{folder / stem}(.gz): file not found; {remedy}")
        if not os.access(path, os.R_OK):
            raise DataError(f"{path}: not readable; {remedy}")
    return folder


def find_data_root(root: str | Path | None = None, download: bool = True) -> Path:
    """Where Fashion-MNIST's IDX files are: `root`, else $FMNIST_DATA, else Debian's
    package, else data/ (torchvision's download, tried when `download` and nothing is found).

    An explicit `root` (or $FMNIST_DATA) is authoritative: if it lacks a file, that file is
    named in the error rather than silently falling back to another copy.
    """
    explicit = root if root not in (None, "") else os.environ.get("FMNIST_DATA") or None
    if explicit is not None:
        return _check_folder(Path(explicit).expanduser(), REMEDY)

    torchvision_raw = DOWNLOAD_ROOT / "FashionMNIST" / "raw"
    for folder in (DEBIAN_ROOT, DOWNLOAD_ROOT, torchvision_raw):
        if _holds_dataset(folder):
            return folder
    if download:
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(DOWNLOAD_ROOT), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(DOWNLOAD_ROOT), train=False, download=True)
        except Exception:  # no network here: fall through to the one-line error
            pass
        if _holds_dataset(torchvision_raw):
            return torchvision_raw
    raise DataError(
        f"Fashion-MNIST not found (looked in data.root, $FMNIST_DATA, {DEBIAN_ROOT}, "
        f"{DOWNLOAD_ROOT}/, and the download failed); {REMEDY}"
    )


# ---------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A data set at its native size: images uint8 (N, H, W), labels int64 (N,). A source
    without a test set of its own (digits) has `test_fraction`: data.py holds that share out."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    num_classes: int
    test_fraction: float = 0.0

    @property
    def native_size(self) -> int:
        return min(self.train_images.shape[1:])


_SOURCES: dict[tuple[str, str], Source] = {}


def load_source(name: str, root: str | Path | None = None, download: bool = True) -> Source:
    """The source `name` (one of SOURCES), read and checked once per process: a sweep pays
    for reading the files once, not once per run."""
    if name not in SOURCES:
        raise DataError(f"data.source={name!r}: not one of {', '.join(SOURCES)}")
    if name == "fashion_mnist":
        folder = find_data_root(root, download).resolve()
    elif name == "idx":
        if root in (None, ""):
            raise DataError(IDX_REMEDY)
        folder = _check_folder(Path(root).expanduser(), IDX_REMEDY).resolve()
    else:
        folder = Path()
    key = (name, str(folder))
    if key not in _SOURCES:
        _SOURCES[key] = (_fashion_mnist(folder) if name == "fashion_mnist"
                         else _idx_folder(folder) if name == "idx" else _digits())
    return _SOURCES[key]


def _read_four(folder: Path, remedy: str) -> dict[str, tuple[Path, torch.Tensor]]:
    """The four IDX files of `folder`, each as (path, tensor), shapes checked."""
    tensors = {key: (file_in(folder, stem), read_idx(file_in(folder, stem), remedy))
               for key, stem in FILES.items()}
    for split in ("train", "test"):
        (images_file, images), (labels_file, labels) = (tensors[f"{split}_images"],
                                                        tensors[f"{split}_labels"])
        if images.dim() != 3:
            raise DataError(f"{images_file}: not an image file (shape {tuple(images.shape)}); "
                            f"{remedy}")
        if labels.dim() != 1:
            raise DataError(f"{labels_file}: not a label file (shape {tuple(labels.shape)}); "
                            f"{remedy}")
        if len(labels) != len(images) or len(labels) == 0:
            raise DataError(f"{images_file}: {len(images)} images and {len(labels)} labels "
                            f"in {labels_file.name}, expected the same number, above 0; {remedy}")
    return tensors


def _fashion_mnist(folder: Path) -> Source:
    tensors = _read_four(folder, REMEDY)
    for split, count in FASHION_COUNTS.items():
        (images_file, images), (labels_file, labels) = (tensors[f"{split}_images"],
                                                        tensors[f"{split}_labels"])
        if tuple(images.shape[1:]) != (28, 28):
            raise DataError(f"{images_file}: images of shape {tuple(images.shape)}, "
                            f"expected (N, 28, 28); {REMEDY}")
        if len(images) != count:
            raise DataError(f"{images_file}: {len(images)} images and {len(labels)} labels, "
                            f"expected {count} of each; {REMEDY}")
        if int(labels.max()) >= 10:
            raise DataError(f"{labels_file}: label {int(labels.max())} outside 0-9; {REMEDY}")
    return Source("fashion_mnist", *_contiguous(tensors), num_classes=10)


def _idx_folder(folder: Path) -> Source:
    tensors = _read_four(folder, IDX_REMEDY)
    (train_file, train), (test_file, test) = tensors["train_images"], tensors["test_images"]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{test_file}: test images are {tuple(test.shape[1:])}, training images "
                        f"({train_file.name}) {tuple(train.shape[1:])}: they must match")
    images_and_labels = _contiguous(tensors)
    # The number of classes comes from the labels: 0..max.
    num_classes = int(max(images_and_labels[1].max(), images_and_labels[3].max())) + 1
    if num_classes < 2:
        raise DataError(f"{folder}: every label is 0; a classifier needs 2 classes or more")
    return Source("idx", *images_and_labels, num_classes=num_classes)


def _contiguous(tensors: dict[str, tuple[Path, torch.Tensor]]) -> list[torch.Tensor]:
    """train images, train labels (int64), test images, test labels, in Source's order."""
    return [tensors[k][1].contiguous() if k.endswith("images") else tensors[k][1].long()
            for k in ("train_images", "train_labels", "test_images", "test_labels")]


def _digits() -> Source:
    from sklearn.datasets import load_digits  # ships inside scikit-learn's wheel

    digits = load_digits()
    # 0..16 grey levels to 0..255, as the IDX sources store them.
    images = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    return Source("digits", images, labels, None, None, num_classes=10,
                  test_fraction=DIGITS_TEST_FRACTION)


# ---------------------------------------------------------------------------- the task


def relabel(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Labels of images of `classes` as their positions in `classes`: 0..k-1 in that order."""
    lookup = torch.full((max(int(labels.max()), *classes) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    return lookup[labels]


def flip_labels(labels: torch.Tensor, fraction: float, num_classes: int,
                seed: int) -> torch.Tensor:
    """A copy of `labels` with round(fraction x N) of them, drawn by `seed`, replaced by a
    different class drawn uniformly: for one seed, the same images get the same new labels."""
    generator = torch.Generator().manual_seed(seed)
    count = round(fraction * len(labels))
    flipped = torch.randperm(len(labels), generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    return noisy


def to_input(images: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W) at native size -> uint8 (N, 28, 28): averaged down to
    `resolution` x `resolution` first (None: native), then resized to the networks' input
    size (bilinear)."""
    if resolution is None and tuple(images.shape[1:]) == (INPUT_SIZE, INPUT_SIZE):
        return images
    x = images.unsqueeze(1).float()
    if resolution is not None:
        x = F.adaptive_avg_pool2d(x, resolution)
    if tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).squeeze(1)
