"""Splits, folds and batches: how a task's images reach the network.

The data module reads the task's source once per process (fmnist_lab.sources), carves the
validation split (or the K folds) out of its training images, takes the training subset,
moves each split to the training device once per run, and slices batches out of it by index.
Keeping uint8 images on the device and slicing them, instead of a torchvision Dataset +
DataLoader + per-image PIL pipeline, is where the MLP's speed comes from
(docs/performance.md has the numbers).

The splits depend on `data.split_seed` alone, never on a run's seed: every run of a task,
whatever its seed or setting, validates on the same images and trains on the same ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from fmnist_lab.sources import (
    DataError,
    Source,
    find_data_root,
    flip_labels,
    load_source,
    relabel,
    to_input,
)
from fmnist_lab.transforms import normalize, to_unit_float

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




@dataclass(frozen=True)
class StepBudget:
    """A run of exactly `steps` optimizer steps (`trainer.max_steps`) whatever the data size,
    validated every `val_every` steps and at the last (`trainer.val_check_interval`; null:
    ten points). Lightning's epochs are cut at the validation points: one epoch per interval,
    so validation, checkpoints and the history fall on those steps, and a resumed run starts
    at one of them. To Lightning the run is `intervals` epochs long: its epoch-based resume,
    not its step-based one, which skips the hooks of the first epoch after a restart."""

    steps: int
    val_every: int

    @classmethod
    def of(cls, trainer: Any) -> StepBudget | None:
        """The budget of a run's `trainer` config; None for an epoch-based run."""
        steps = trainer.get("max_steps")
        if steps is None or steps < 1 or trainer.get("max_epochs") not in (None, -1):
            return None
        return cls(steps, trainer.get("val_check_interval") or math.ceil(steps / 10))

    @property
    def intervals(self) -> int:
        """Lightning's epochs: validation intervals, the last one maybe short."""
        return math.ceil(self.steps / self.val_every)

    def interval_end(self, step: int) -> int:
        """The step that ends the validation interval `step` lies in."""
        return min((step // self.val_every + 1) * self.val_every, self.steps)


class StepBatches:
    """The training batches of a step budget's interval from step `start`: the batches of
    the epoch-based path (each data epoch shuffled by `shuffle_seed(epoch)`, its last batch
    short), epoch after epoch, in groups of up to `group_batches` that end at a data epoch's
    end and at the interval's end. Built anew for every interval (Lightning reloads it)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 group_batches: int, budget: StepBudget, start: int,
                 shuffle_seed: Callable[[int], int]) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.group_batches = batch_size, group_batches
        self.start, self.end = start, budget.interval_end(start)
        self.shuffle_seed = shuffle_seed
        self.steps_per_epoch = math.ceil(len(labels) / batch_size)

    def _groups(self) -> Iterator[tuple[int, int, int]]:
        """(data epoch, first batch, end batch) of every group of the interval."""
        step = self.start
        while step < self.end:
            epoch, first = divmod(step, self.steps_per_epoch)
            end = min(first + self.group_batches, self.steps_per_epoch,
                      first + self.end - step)
            yield epoch, first, end
            step += end - first

    def __len__(self) -> int:
        return sum(1 for _ in self._groups())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, order_epoch = None, None
        for epoch, first, end in self._groups():
            if epoch != order_epoch:
                generator = torch.Generator().manual_seed(self.shuffle_seed(epoch))
                order = torch.randperm(len(self.labels), generator=generator).to(
                    self.labels.device)
                order_epoch = epoch
            idx = order[first * self.batch_size : end * self.batch_size]
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


@dataclass(frozen=True)
class TaskSplit:
    """Which images of a task each split takes (positions into the source's training or test
    images) and their labels for the task: relabelled by `classes`, training labels noisy."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def train_and_test(source: Source, split_seed: int) -> tuple[torch.Tensor, ...]:
    """(train images, train labels, test images, test labels) of `source`; a source without
    a test set (digits) has its `test_fraction` of every class held out by `split_seed`."""
    if source.test_images is not None:
        return source.train_images, source.train_labels, source.test_images, source.test_labels
    size = round(source.test_fraction * len(source.train_labels))
    train, test = stratified_holdout(source.train_labels, size, split_seed)
    return (source.train_images[train], source.train_labels[train],
            source.train_images[test], source.train_labels[test])


def task_split(
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    train_size: int | None = None,
    val_size: int = 5000,
    test_size: int | None = None,
    num_folds: int | None = None,
    fold: int = 0,
    split_seed: int = 0,
    classes: list[int] | None = None,
    label_noise: float = 0.0,
) -> TaskSplit:
    """The splits of a task, from the labels of its source's training and test images.

    Hold-out: `val_size` images of all the training images, stratified, validate (the same
    images whatever `train_size` and `classes`, which only leave some out); `train_size` of
    the rest train, stratified; null: all of them. K-fold: the first `train_size` shuffled
    images (of `classes`) are split into `num_folds` stratified folds; fold `fold` validates.
    Raises DataError naming the key when a split would be empty or lack a class.
    """
    pool = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(split_seed))
    kept = (lambda idx, labels: idx[torch.isin(labels[idx], torch.tensor(classes))]) \
        if classes else (lambda idx, labels: idx)
    test = kept(torch.arange(len(test_labels)), test_labels)[:test_size]
    if num_folds:
        pool = kept(pool, train_labels)[:train_size]
        if len(pool) < num_folds:
            raise DataError(f"data.train_size={train_size}: {len(pool)} images cannot fill "
                            f"data.num_folds={num_folds} folds")
        folds = stratified_folds(train_labels[pool], num_folds, split_seed)
        rest = torch.cat([f for k, f in enumerate(folds) if k != fold]).sort().values
        train, val = pool[rest], pool[folds[fold]]
    else:
        if val_size >= len(pool):
            raise DataError(f"data.val_size={val_size}: the source has {len(pool)} training "
                            "images; leave some to train on")
        train_at, val_at = stratified_holdout(train_labels[pool], val_size, split_seed)
        train, val = kept(pool[train_at], train_labels), kept(pool[val_at], train_labels)
        if train_size is not None:
            if train_size > len(train):
                raise DataError(f"data.train_size={train_size}: {len(train)} training images "
                                "remain after the validation split (and data.classes)")
            train = train[stratified_holdout(train_labels[train], train_size, split_seed)[1]]

    def labels_of(idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return relabel(labels[idx], classes) if classes else labels[idx]

    k = len(classes) if classes else num_classes
    split = TaskSplit(train, val, test, labels_of(train, train_labels),
                      labels_of(val, train_labels), labels_of(test, test_labels), k)
    _check_every_class_present(split)
    if label_noise:
        noisy = flip_labels(split.train_labels, label_noise, k, split_seed)
        split = TaskSplit(train, val, test, noisy, split.val_labels, split.test_labels, k)
    return split


def _check_every_class_present(split: TaskSplit) -> None:
    """A class without a training image cannot be learnt, one without a validation image
    cannot be scored, and no test image means no test numbers: name the key that did it."""
    for name, labels, keys in (("training", split.train_labels, "data.train_size"),
                               ("validation", split.val_labels, "data.val_size")):
        counts = torch.bincount(labels, minlength=split.num_classes)
        if (counts == 0).any():
            missing = int(torch.nonzero(counts == 0)[0])
            raise DataError(f"{keys} (with data.classes, data.num_folds): class {missing} of "
                            f"{split.num_classes} has no {name} image; use more images")
    if len(split.test_labels) == 0:
        raise DataError("data.test_size (with data.classes): no test image is left")


def _check_classes(classes: list[int], source: Source) -> None:
    if max(classes) >= source.num_classes:
        raise DataError(f"data.classes={classes}: {source.name} has classes 0 to "
                        f"{source.num_classes - 1}")


class TaskDataModule(pl.LightningDataModule):
    """Owns a task's splits (hold-out or K-fold), its training subset, and the transforms.

    Images stay uint8 until they are on the device; `prepare` turns them into normalised
    float batches and applies the training augmentation to training batches only, so
    validation and test always see the `standard` transform. Training batches reach the
    module as a `BatchGroup` of `group_batches` batches; evaluation batches as (x, y).
    """

    def __init__(
        self,
        source: str = "fashion_mnist",
        root: str | None = None,
        download: bool = True,
        batch_size: int = 128,
        eval_batch_size: int = 128,
        resolution: int | None = None,
        seed: int = 0,
        augment: nn.Module | None = None,
        channels_last: bool = False,
        group_batches: int = 1,
        budget: StepBudget | None = None,
        **split_args: Any,
    ) -> None:
        """`split_args`: the keys of `task_split` (train_size, val_size, test_size,
        num_folds, fold, split_seed, classes, label_noise). `budget`: a step budget's
        intervals instead of whole epochs (the trainer reloads the loader every interval)."""
        super().__init__()
        self.source, self.root, self.download = source, root, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        if split_args.get("classes") is not None:
            split_args["classes"] = list(split_args["classes"])
        self.split_args = {"split_seed": 0, **split_args}
        self.resolution = resolution
        self.seed = seed
        self.augment = augment
        self.channels_last = channels_last
        self.group_batches = group_batches
        self.budget = budget
        self._split: TaskSplit | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.prepare_seconds = 0.0  # reading, splitting and moving the data to the device

    def split(self) -> TaskSplit:
        """Which images train, validate and test, and their labels (no image is touched)."""
        if self._split is None:
            started = time.perf_counter()
            source = load_source(self.source, self.root, self.download)
            if self.resolution is not None and self.resolution > source.native_size:
                raise DataError(f"data.resolution={self.resolution}: {source.name}'s images "
                                f"are {source.native_size}x{source.native_size}; use 4 to "
                                f"{source.native_size}")
            _, train_labels, _, test_labels = train_and_test(source, self.split_args["split_seed"])
            if self.split_args.get("classes"):
                _check_classes(self.split_args["classes"], source)
            self._split = task_split(train_labels, test_labels, source.num_classes,
                                     **self.split_args)
            self.prepare_seconds += time.perf_counter() - started
        return self._split

    @property
    def num_classes(self) -> int:
        """The output layer's width: the task's classes."""
        return self.split().num_classes

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        split = self.split()
        started = time.perf_counter()
        source = load_source(self.source, self.root, self.download)
        train_images, _, test_images, _ = train_and_test(source, self.split_args["split_seed"])
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        for name, images, idx, labels in (
            ("train", train_images, split.train, split.train_labels),
            ("val", train_images, split.val, split.val_labels),
            ("test", test_images, split.test, split.test_labels),
        ):
            self._splits[name] = (to_input(images[idx], self.resolution).to(device),
                                  labels.to(device))
        self.prepare_seconds += time.perf_counter() - started

    def _shuffle_seed(self, epoch: int | None = None) -> int:
        """The seed of a data epoch's order: the run's seed and the epoch alone."""
        if epoch is None:
            epoch = self.trainer.current_epoch if self.trainer else 0
        return self.seed * 1_000_003 + epoch

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps a pass over the training images takes (the last batch short)."""
        return math.ceil(self.num_images("train") / self.batch_size)

    def train_dataloader(self) -> TensorBatches | StepBatches:
        if self.budget is not None:
            start = self.trainer.global_step if self.trainer else 0
            return StepBatches(*self._splits["train"], self.batch_size, self.group_batches,
                               self.budget, start, self._shuffle_seed)
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

    def labels(self, split: str) -> torch.Tensor:
        """The task's labels of `split` ("train", "val", "test"), in batch order."""
        return self._splits[split][1]

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
        d = load_source("fashion_mnist", found)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"Fashion-MNIST OK in {found}: {len(d.train_labels)} train, {len(d.test_labels)} test")
