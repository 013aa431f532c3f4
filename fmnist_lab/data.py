"""Fashion-MNIST from its four IDX files, split and served as batches of device tensors.

The whole data set is 55 MB of uint8, so it is read once per process, moved to the training
device once per run, and batches are sliced out of it by index. That is what makes the MLP
train ~10x faster than a torchvision Dataset + DataLoader + per-image PIL pipeline, and it
lets a sweep pay for reading the files once (the cache below), not once per run.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from fmnist_lab.transforms import normalize, to_unit_float

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_ROOT = Path("data")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60_000, "test": 10_000}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
REMEDY = "run `make setup`, or pass data.root=FOLDER holding the four Fashion-MNIST IDX files"


class DataError(Exception):
    """A data problem a user can fix; its message is one line naming the file and the remedy."""


# ---------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (gzipped or not) into a uint8 tensor, checking its header."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; {REMEDY}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt ({e}); {REMEDY}") from None

    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file; {REMEDY}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        magic = struct.unpack(">I", raw[:4])[0]
        raise DataError(f"{path}: bad magic number {magic} (expected 2049 or 2051); {REMEDY}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header; {REMEDY}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header} bytes of data, header says {expected} "
            f"(shape {shape}): truncated or corrupt; {REMEDY}"
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


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _holds_dataset(folder: Path) -> bool:
    return all(_file_in(folder, stem) for stem in FILES.values())


def find_data_root(root: str | Path | None = None, download: bool = True) -> Path:
    """Where the IDX files are: `root`, else $FMNIST_DATA, else Debian's package, else data/.

    An explicit `root` (or $FMNIST_DATA) is authoritative: if it lacks a file, that file is
    named in the error rather than silently falling back to another copy.
    """
    explicit = root if root not in (None, "") else os.environ.get("FMNIST_DATA") or None
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder does not exist; {REMEDY}")
        for stem in FILES.values():
            if _file_in(folder, stem) is None:
                raise DataError(f"{folder / stem}(.gz): file not found; {REMEDY}")
        return folder

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


@dataclass(frozen=True)
class FashionMNIST:
    """The whole data set as uint8 tensors: images (N, 28, 28), labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


_CACHE: dict[Path, FashionMNIST] = {}


def load_fashion_mnist(root: str | Path | None = None, download: bool = True) -> FashionMNIST:
    """Read and validate the four files once per process (a sweep reuses them)."""
    folder = find_data_root(root, download).resolve()
    if folder in _CACHE:
        return _CACHE[folder]
    tensors = {key: read_idx(_file_in(folder, stem)) for key, stem in FILES.items()}
    for split, count in COUNTS.items():
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        images_file = _file_in(folder, FILES[f"{split}_images"])
        labels_file = _file_in(folder, FILES[f"{split}_labels"])
        if images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
            raise DataError(f"{images_file}: images of shape {tuple(images.shape)}, "
                            f"expected (N, 28, 28); {REMEDY}")
        if labels.dim() != 1:
            raise DataError(f"{labels_file}: not a label file (shape {tuple(labels.shape)}); "
                            f"{REMEDY}")
        if len(images) != count or len(labels) != count:
            raise DataError(f"{images_file}: {len(images)} images and {len(labels)} labels, "
                            f"expected {count} of each; {REMEDY}")
        if int(labels.max()) >= NUM_CLASSES:
            raise DataError(f"{labels_file}: label {int(labels.max())} outside 0-9; {REMEDY}")
    data = FashionMNIST(**{k: v.contiguous() for k, v in tensors.items()})
    _CACHE[folder] = data
    return data


# ---------------------------------------------------------------------------- splits


def _class_interleaved(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Positions into `labels`, shuffled within each class, classes concatenated.

    Dealing this order out evenly (every k-th, or in proportion) gives splits that are
    class-balanced to within one image per class.
    """
    parts = []
    for c in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == c).flatten()
        parts.append(members[torch.randperm(len(members), generator=generator)])
    return torch.cat(parts)


def stratified_holdout(
    labels: torch.Tensor, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions 0..len(labels)-1 into (train, holdout) with `size` stratified holdout."""
    n = len(labels)
    order = _class_interleaved(labels, torch.Generator().manual_seed(seed))
    j = torch.arange(n)
    picked = (j + 1) * size // n > j * size // n  # exactly `size` picks spread evenly
    holdout, train = order[picked], order[~picked]
    return train.sort().values, holdout.sort().values


def stratified_folds(labels: torch.Tensor, num_folds: int, seed: int) -> list[torch.Tensor]:
    """Stratified K-fold: the K validation position sets, disjoint and covering all."""
    order = _class_interleaved(labels, torch.Generator().manual_seed(seed))
    fold_of = torch.arange(len(order)) % num_folds
    return [order[fold_of == k].sort().values for k in range(num_folds)]


# ---------------------------------------------------------------------------- batches


class TensorBatches:
    """Batches sliced from tensors that already live on the training device.

    Lightning accepts any sized iterable as a dataloader. Shuffling is seeded from the run's
    seed and the epoch number, so a run resumed from a checkpoint sees the same order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle_seed: Callable[[], int] | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle_seed = shuffle_seed

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle_seed is None:
            yield from zip(self.images.split(self.batch_size),
                           self.labels.split(self.batch_size), strict=True)
            return
        generator = torch.Generator().manual_seed(self.shuffle_seed())
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            # index_select copies whole rows; advanced indexing (`images[idx]`) is many
            # times slower on the CPU.
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


class BatchGroup(TensorBatches):
    """Consecutive training batches handed to Lightning as one: the module runs them one by
    one, each with its own optimizer step (see `data.group_batches`).

    Lightning's loop around a batch costs as much as the MLP's whole training step on a
    CPU; a group pays it once. The batches are the ones `group_batches=1` gives, in the same
    order, and each is prepared (float, augmented, normalised) only when iterated, so the
    random draws come in the same order and each batch is still in cache when it is used.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        prepare: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(images, labels, batch_size)
        self.prepare = prepare

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in super().__iter__():
            yield self.prepare(images), labels


class FashionMNISTDataModule(pl.LightningDataModule):
    """Owns the splits (hold-out or K-fold), the training subset, and the transforms.

    Images stay uint8 until they are on the device; `prepare` turns them into normalised
    float batches and applies the training augmentation to training batches only, so
    validation and test always see the `standard` transform. Training batches reach the
    module as a `BatchGroup` of `group_batches` batches; evaluation batches as (x, y).
    """

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        train_size: int | None = None,
        val_size: int = 5000,
        test_size: int | None = None,
        num_folds: int | None = None,
        fold: int = 0,
        split_seed: int = 0,
        seed: int = 0,
        augment: nn.Module | None = None,
        channels_last: bool = False,
        group_batches: int = 1,
    ) -> None:
        super().__init__()
        self.root, self.download = root, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.num_folds, self.fold = num_folds, fold
        self.split_seed, self.seed = split_seed, seed
        self.augment = augment
        self.channels_last = channels_last
        self.group_batches = group_batches
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def split_indices(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) indices into the 60,000 training images; depends on split_seed only."""
        pool = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        if self.train_size is not None:
            pool = pool[: self.train_size]
        pool_labels = labels[pool]
        if self.num_folds:
            folds = stratified_folds(pool_labels, self.num_folds, self.split_seed)
            val = folds[self.fold]
            train = torch.cat([f for k, f in enumerate(folds) if k != self.fold]).sort().values
        else:
            # With a training subset the validation set shrinks in proportion (5,000 of
            # 60,000 by default), so a quick run on 600 images validates on 50.
            size = self.val_size * len(pool) // len(labels)
            train, val = stratified_holdout(pool_labels, max(size, NUM_CLASSES), self.split_seed)
        return pool[train], pool[val]

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        data = load_fashion_mnist(self.root, self.download)
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        train, val = self.split_indices(data.train_labels)
        test_n = self.test_size or len(data.test_labels)
        for name, images, labels in (
            ("train", data.train_images[train], data.train_labels[train]),
            ("val", data.train_images[val], data.train_labels[val]),
            ("test", data.test_images[:test_n], data.test_labels[:test_n]),
        ):
            self._splits[name] = (images.to(device), labels.long().to(device))

    def _shuffle_seed(self) -> int:
        epoch = self.trainer.current_epoch if self.trainer else 0
        return self.seed * 1_000_003 + epoch

    def train_dataloader(self) -> TensorBatches:
        # Slices of whole groups: split into batches again, they are exactly the batches of
        # group_batches=1 (the last one short when the batch size does not divide the data).
        return TensorBatches(*self._splits["train"], self.batch_size * self.group_batches,
                             self._shuffle_seed)

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._splits["val"], self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return TensorBatches(*self._splits["test"], self.eval_batch_size)

    def num_images(self, split: str) -> int:
        return len(self._splits[split][1])

    def prepare(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 images on the device -> the network's input: float, augmented when
        `train`, normalised, NHWC when data.channels_last."""
        x = to_unit_float(images)
        if train and self.augment is not None:
            x = self.augment(x)
        x = normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            return BatchGroup(images, labels, self.batch_size, partial(self.prepare, train=True))
        return self.prepare(images), labels


if __name__ == "__main__":
    # `python -m fmnist_lab.data [FOLDER]`: check the data can be found and is intact.
    import sys

    try:
        found = find_data_root(sys.argv[1] if len(sys.argv) > 1 else None)
        d = load_fashion_mnist(found)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"Fashion-MNIST OK in {found}: {len(d.train_labels)} train, {len(d.test_labels)} test")
