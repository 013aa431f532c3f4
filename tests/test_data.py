import gzip
from functools import partial
from pathlib import Path

import pytest
import torch

from fmnist_lab import sources as tasks_mod
from fmnist_lab.data import BatchGroup, TaskDataModule, stratified_folds, stratified_holdout
from fmnist_lab.sources import FILES, DataError, find_data_root, load_source, read_idx, write_idx


def write_small_dataset(folder: Path, n_train: int = 60_000, n_test: int = 10_000,
                        gz: bool = True) -> None:
    """A data set of the real shapes and counts (blank images), written as IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        stem_i, stem_l = FILES[f"{split}_images"], FILES[f"{split}_labels"]
        write_idx(folder / (stem_i + suffix), torch.zeros(n, 28, 28, dtype=torch.uint8))
        write_idx(folder / (stem_l + suffix), torch.arange(n, dtype=torch.uint8) % 10)


# ---------------------------------------------------------------- the IDX reader


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / name, images)
    assert torch.equal(read_idx(tmp_path / name), images)


def test_idx_labels_round_trip(tmp_path):
    labels = torch.tensor([3, 1, 4, 1, 5, 9], dtype=torch.uint8)
    write_idx(tmp_path / "labels-idx1-ubyte", labels)
    assert torch.equal(read_idx(tmp_path / "labels-idx1-ubyte"), labels)


def test_idx_header_is_big_endian_magic(tmp_path):
    write_idx(tmp_path / "x", torch.zeros(2, 28, 28, dtype=torch.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert int.from_bytes(raw[:4], "big") == 2051
    assert int.from_bytes(raw[4:8], "big") == 2


def test_wrong_magic_names_the_file(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="bad-idx3-ubyte.*magic"):
        read_idx(bad)


def test_truncated_gzip_names_the_file(tmp_path):
    good = tmp_path / "good.gz"
    write_idx(good, torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8))
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match="cut-idx3-ubyte.gz.*truncated or corrupt"):
        read_idx(cut)


def test_too_few_bytes_for_header_shape(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    write_idx(path, torch.zeros(10, 28, 28, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-28])
    with pytest.raises(DataError, match="short-idx3-ubyte.*header says"):
        read_idx(path)


def test_wrong_counts_are_caught(tmp_path):
    write_small_dataset(tmp_path, n_train=600)
    with pytest.raises(DataError, match="600 images.*expected 60000"):
        load_source("fashion_mnist", tmp_path)


# ---------------------------------------------------------------- finding the files


def test_found_through_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    write_small_dataset(tmp_path / "mine", gz=False)
    assert find_data_root(tmp_path / "mine") == tmp_path / "mine"
    data = load_source("fashion_mnist", tmp_path / "mine")
    assert len(data.train_images) == 60_000 and data.train_images.max() == 0


def test_found_through_env_variable(tmp_path, monkeypatch):
    write_small_dataset(tmp_path / "env")
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path / "env"))
    assert find_data_root(None) == tmp_path / "env"


def test_data_root_wins_over_env_variable(tmp_path, monkeypatch):
    write_small_dataset(tmp_path / "a")
    write_small_dataset(tmp_path / "b")
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path / "b"))
    assert find_data_root(tmp_path / "a") == tmp_path / "a"


def test_found_in_debians_folder_by_default(tmp_path, monkeypatch):
    # Debian's folder, wherever this machine's data came from: a stand-in at its place.
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    write_small_dataset(tmp_path / "debian", n_train=10, n_test=10)
    monkeypatch.setattr(tasks_mod, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.setattr(tasks_mod, "DOWNLOAD_ROOT", tmp_path / "data")
    write_small_dataset(tmp_path / "data", n_train=10, n_test=10)  # found after Debian's
    assert find_data_root(None, download=False) == tmp_path / "debian"


def test_missing_file_is_named(tmp_path):
    write_small_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*make setup"):
        find_data_root(tmp_path)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        find_data_root(tmp_path / "nowhere")


def test_nothing_anywhere_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    monkeypatch.setattr(tasks_mod, "DEBIAN_ROOT", tmp_path / "none")
    monkeypatch.setattr(tasks_mod, "DOWNLOAD_ROOT", tmp_path / "data")
    with pytest.raises(DataError, match="not found.*make setup"):
        find_data_root(None, download=False)


# ---------------------------------------------------------------- the real data


def test_real_data_has_the_published_counts():
    data = load_source("fashion_mnist")
    assert data.train_images.shape == (60_000, 28, 28)
    assert data.test_images.shape == (10_000, 28, 28)
    assert data.train_images.dtype == torch.uint8
    assert torch.equal(torch.bincount(data.train_labels.long()), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(data.test_labels.long()), torch.full((10,), 1000))


def test_real_data_is_read_once_per_process():
    assert load_source("fashion_mnist") is load_source("fashion_mnist")


# ---------------------------------------------------------------- splits


def test_holdout_is_stratified_and_disjoint():
    labels = load_source("fashion_mnist").train_labels
    train, val = stratified_holdout(labels, 5000, seed=0)
    assert len(val) == 5000 and len(train) == 55_000
    assert len(set(train.tolist()) | set(val.tolist())) == 60_000
    counts = torch.bincount(labels[val].long(), minlength=10)
    assert counts.max() - counts.min() <= 1


def test_holdout_depends_on_split_seed_only():
    labels = load_source("fashion_mnist").train_labels
    assert torch.equal(stratified_holdout(labels, 500, 0)[1], stratified_holdout(labels, 500, 0)[1])
    assert not torch.equal(stratified_holdout(labels, 500, 0)[1],
                           stratified_holdout(labels, 500, 1)[1])


def test_folds_are_disjoint_cover_everything_and_are_balanced():
    labels = load_source("fashion_mnist").train_labels
    folds = stratified_folds(labels, 5, seed=0)
    together = torch.cat(folds)
    assert len(together) == 60_000 and len(torch.unique(together)) == 60_000
    for fold in folds:
        counts = torch.bincount(labels[fold].long(), minlength=10)
        assert counts.max() - counts.min() <= 1


def test_folds_of_an_uneven_subset_balance_within_one_image():
    labels = load_source("fashion_mnist").train_labels[:1237]
    folds = stratified_folds(labels, 5, seed=3)
    assert sorted(torch.cat(folds).tolist()) == list(range(1237))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(10):
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1


def _datamodule(**kwargs) -> TaskDataModule:
    dm = TaskDataModule(**kwargs)
    dm.setup("fit")
    return dm


def test_train_size_counts_training_images_and_validation_stays_the_same():
    full, small = TaskDataModule().split(), _datamodule(train_size=1200)
    assert small.num_images("train") == 1200 and small.num_images("test") == 10_000
    # Every hold-out task of Fashion-MNIST validates on the same 5,000 held-out images.
    assert torch.equal(small.split().val, full.val) and len(full.val) == 5000
    assert len(full.train) == 55_000
    counts = torch.bincount(small.labels("train"), minlength=10)
    assert counts.tolist() == [120] * 10  # a stratified subset


def test_train_and_val_never_overlap():
    split = TaskDataModule(train_size=3000).split()
    assert not set(split.train.tolist()) & set(split.val.tolist())


def test_batches_are_uint8_slices_then_normalised_floats():
    dm = _datamodule(train_size=600, val_size=500, batch_size=64)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 10  # 600 images / 64
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (64, 28, 28) and y.dtype == torch.int64
    x, y = dm.on_after_batch_transfer((x, y), 0)
    assert x.shape == (64, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert sum(len(b[1]) for b in batches) == 600


def test_groups_hold_the_batches_of_group_batches_1_in_order():
    single = _datamodule(train_size=600, val_size=500, batch_size=64)
    grouped = _datamodule(train_size=600, val_size=500, batch_size=64, group_batches=4)
    groups = [BatchGroup(x, y, 64, grouped.prepare) for x, y in grouped.train_dataloader()]
    assert len(groups) == len(grouped.train_dataloader()) == 3  # 10 batches in 4 + 4 + 2
    assert [len(g) for g in groups] == [4, 4, 2]
    from_groups = [batch for group in groups for batch in group]
    batches = [(single.prepare(x), y) for x, y in single.train_dataloader()]
    assert len(from_groups) == len(batches) == 10
    for (x, y), (gx, gy) in zip(batches, from_groups, strict=True):
        assert torch.equal(x, gx) and torch.equal(y, gy)
    assert from_groups[-1][0].shape == (24, 1, 28, 28)  # 600 = 9 * 64 + 24


def test_training_batches_are_augmented_and_prepared_lazily():
    dm = _datamodule(train_size=600, val_size=500, batch_size=64, augment=torch.nn.Identity())
    calls = []
    dm.augment = lambda x: calls.append(len(x)) or x.flip(-1)
    images, labels = next(iter(dm.train_dataloader()))
    group = BatchGroup(images, labels, 32, partial(dm.prepare, train=True))
    assert calls == []  # nothing is prepared before the module iterates the group
    x, _ = next(iter(group))
    assert calls == [32]
    assert torch.equal(x, dm.prepare(images[:32]).flip(-1))  # eval batches: no augmentation


def test_shuffle_differs_by_seed_and_is_reproducible():
    first = [next(iter(_datamodule(train_size=600, val_size=500, seed=s).train_dataloader()))[1]
             for s in (0, 0, 1)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_gz_and_unpacked_files_read_the_same(tmp_path, data_files):
    path = data_files["t10k-labels-idx1-ubyte"]
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    (tmp_path / "labels").write_bytes(raw)
    (tmp_path / "labels.gz").write_bytes(gzip.compress(raw))
    labels = read_idx(tmp_path / "labels")
    assert torch.equal(labels, read_idx(tmp_path / "labels.gz"))
    assert torch.equal(labels, load_source("fashion_mnist").test_labels)
