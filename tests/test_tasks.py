"""Tasks as data options: the sources (Fashion-MNIST, digits, any IDX folder), the keys that
change the task (classes, label_noise, resolution), their checks, and experiment=tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fmnist_lab.data import TaskDataModule
from fmnist_lab.results import run_key
from fmnist_lab.run import train
from fmnist_lab.schema import ConfigError, check_config
from fmnist_lab.sources import (
    FILES,
    DataError,
    flip_labels,
    load_source,
    relabel,
    to_input,
    write_idx,
)
from tests.conftest import compose_config, make_cfg, run_cli


def write_idx_folder(folder: Path, n_train: int = 300, n_test: int = 90, classes: int = 3,
                     size: int = 20) -> Path:
    """A small MNIST-format data set: class c is a bright square at row 2c (learnable)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.arange(n) % classes
        images = torch.zeros(n, size, size, dtype=torch.uint8)
        for i, c in enumerate(labels.tolist()):
            images[i, 2 * c: 2 * c + 4, 2:6] = 255
        write_idx(folder / (FILES[f"{split}_images"] + ".gz"), images)
        write_idx(folder / FILES[f"{split}_labels"], labels.to(torch.uint8))
    return folder


# ---------------------------------------------------------------------------- sources


def test_digits_split_into_the_stated_sizes_at_28x28():
    dm = TaskDataModule(source="digits", val_size=359)
    dm.setup()
    assert (dm.num_images("train"), dm.num_images("val"), dm.num_images("test")) == (1079, 359,
                                                                                    359)
    images, labels = dm._splits["test"]
    assert images.shape == (359, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels, minlength=10).min() >= 35  # stratified: 20 % of each class
    assert load_source("digits").native_size == 8


def test_the_digits_option_composes_its_split():
    cfg = compose_config("config", "data=digits")
    assert cfg.data.source == "digits" and cfg.data.val_size == 359


def test_an_idx_folder_is_a_task_with_the_classes_of_its_labels(tmp_path):
    root = write_idx_folder(tmp_path / "mine", classes=3, size=20)
    source = load_source("idx", root)
    assert source.num_classes == 3 and source.native_size == 20
    dm = TaskDataModule(source="idx", root=str(root), val_size=60)
    dm.setup()
    assert dm.num_classes == 3
    assert dm._splits["train"][0].shape[1:] == (28, 28)  # resized for the networks


def test_an_idx_run_trains_a_three_way_output_layer(tmp_path):
    root = write_idx_folder(tmp_path / "mine")
    cfg = make_cfg("data=idx", f"data.root={root}", "data.train_size=200", "data.val_size=60",
                   "data.test_size=null", "model=three_fc", "trainer.max_epochs=3",
                   "optimizer.lr=0.05")
    result = train(cfg, tmp_path / "run")
    assert result["num_classes"] == 3
    assert result["num_params"] == 94_154 - (256 * 10 + 10) + (256 * 3 + 3)
    assert result["test_acc"] > 0.9  # the squares are easy


def test_an_idx_folder_keeps_its_root_in_the_run_key(tmp_path):
    a = write_idx_folder(tmp_path / "a")
    b = write_idx_folder(tmp_path / "b")

    def key(root):
        return run_key(OmegaConf.to_container(
            compose_config("config", "data=idx", f"data.root={root}"), resolve=True))

    assert key(a) != key(b)  # two data sets, not one run
    fashion = [compose_config("config", f"data.root={r}") for r in (a, b)]
    assert len({run_key(OmegaConf.to_container(c, resolve=True)) for c in fashion}) == 1


# ---------------------------------------------------------------------------- the task keys


def test_classes_are_relabelled_in_the_order_given():
    labels = torch.tensor([6, 0, 2, 6, 4])
    assert relabel(labels, [6, 0, 2, 4]).tolist() == [0, 1, 2, 0, 3]


def test_classes_keep_only_their_images_and_validate_on_their_share_of_the_holdout():
    everything = TaskDataModule().split()
    upper = TaskDataModule(train_size=5000, classes=[0, 2, 4, 6]).split()
    source = load_source("fashion_mnist")
    assert upper.num_classes == 4 and len(upper.train) == 5000 and len(upper.val) == 2000
    assert set(upper.val.tolist()) <= set(everything.val.tolist())
    assert set(source.train_labels[upper.train].unique().tolist()) == {0, 2, 4, 6}
    assert torch.equal(upper.train_labels, relabel(source.train_labels[upper.train],
                                                   [0, 2, 4, 6]))
    assert len(upper.test) == 4000 and upper.test_labels.max() == 3


def test_a_class_run_records_its_classes_and_output_width(tmp_path):
    cfg = make_cfg("data.classes=[0,2,4,6]", "model=three_fc")
    result = train(cfg, tmp_path)
    assert result["num_classes"] == 4
    assert result["num_params"] == 94_154 - (256 * 10 + 10) + (256 * 4 + 4)
    with np.load(tmp_path / result["predictions"]) as saved:
        assert saved["test_label"].max() == 3 and saved["test_predicted"].max() <= 3


def test_label_noise_flips_the_stated_share_to_other_classes_the_same_for_every_seed():
    clean = TaskDataModule(train_size=5000).split()
    noisy = [TaskDataModule(train_size=5000, label_noise=0.4, seed=s).split() for s in (0, 1)]
    assert torch.equal(noisy[0].train, clean.train)
    flipped = noisy[0].train_labels != clean.train_labels
    assert int(flipped.sum()) == 2000  # 40 % of 5,000, each to another class
    assert torch.equal(noisy[0].train_labels, noisy[1].train_labels)  # whatever the run seed
    assert torch.equal(noisy[0].val_labels, clean.val_labels)  # validation stays clean
    assert torch.equal(noisy[0].test_labels, clean.test_labels)
    # Uniform over the other classes: each of the 9 shifts is drawn about equally often.
    shifts = (noisy[0].train_labels - clean.train_labels)[flipped] % 10
    assert shifts.min() >= 1 and torch.bincount(shifts, minlength=10)[1:].min() > 150


def test_flipped_labels_differ_from_the_originals():
    labels = torch.arange(1000) % 4
    noisy = flip_labels(labels, 0.5, 4, seed=3)
    changed = noisy != labels
    assert int(changed.sum()) == 500 and noisy.max() <= 3


def test_resolution_keeps_only_what_r_by_r_block_means_hold():
    torch.manual_seed(0)
    a = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    # b: inside every 4x4 block, pixels moved around (the block means stay the same).
    b = a.view(2, 7, 4, 7, 4).flip(2, 4).reshape(2, 28, 28)
    assert not torch.equal(a, b)
    low_a, low_b = to_input(a, 7), to_input(b, 7)
    assert low_a.shape == (2, 28, 28) and torch.equal(low_a, low_b)
    assert torch.equal(to_input(a, None), a) and torch.equal(to_input(a, 28), a)


def test_a_7px_task_trains_on_blurred_images():
    dm = TaskDataModule(train_size=1000, resolution=7)
    dm.setup()
    images = dm._splits["train"][0].float()
    sharp = TaskDataModule(train_size=1000)
    sharp.setup()
    # Less detail: neighbouring pixels differ far less than in the native images.
    def roughness(x: torch.Tensor) -> float:
        return float((x[:, :, 1:] - x[:, :, :-1]).abs().mean())
    assert roughness(images) < 0.5 * roughness(sharp._splits["train"][0].float())


def test_new_keys_at_their_defaults_and_speed_switches_keep_a_runs_identity():
    default = run_key(OmegaConf.to_container(compose_config("config"), resolve=True))
    assert default == "26821de64d076cf0"  # as the study recorded it
    for same in ("data.channels_last=true", "num_threads=1", "data.eval_batch_size=1000",
                 "data=fashion_mnist", "data.label_noise=0.0", "task=fmnist_55k"):
        cfg = compose_config("config", same)
        assert run_key(OmegaConf.to_container(cfg, resolve=True)) == default, same
    for other in ("data.label_noise=0.4", "data.classes=[0,2]", "data.resolution=7",
                  "data.train_size=5000", "data=digits"):
        cfg = compose_config("config", other)
        assert run_key(OmegaConf.to_container(cfg, resolve=True)) != default, other


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("override, key", [
    ("data.label_noise=1.0", "data.label_noise"),
    ("data.label_noise=-0.1", "data.label_noise"),
    ("data.classes=[]", "data.classes"),
    ("data.classes=[3]", "data.classes"),
    ("data.classes=[1,1,2]", "data.classes"),
    ("data.classes=[0,-1]", "data.classes"),
    ("data.resolution=3", "data.resolution"),
    ("data.source=mnist", "data.source"),
    ("data=idx", "data.root"),
])
def test_bad_task_keys_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(make_cfg(override))


@pytest.mark.parametrize("overrides, match", [
    (["data.classes=[0,10]"], r"data\.classes=\[0, 10\].*classes 0 to 9"),
    (["data.resolution=29"], r"data\.resolution=29.*use 4 to 28"),
    (["data=digits", "data.resolution=9", "data.test_size=null"], r"data\.resolution=9.*4 to 8"),
    (["data.train_size=3", "data.classes=[0,1,2,3]"], r"class \d of 4 has no training image"),
    (["data.val_size=2"], r"class \d of 10 has no validation image"),
    (["data.train_size=59600"], r"data\.train_size=59600.*59500 training images remain"),
    (["data.val_size=60000"], r"data\.val_size=60000"),
])
def test_tasks_the_data_cannot_give_are_one_line_errors(overrides, match):
    with pytest.raises(DataError, match=match):
        check_config(make_cfg(*overrides))


def test_an_unreadable_idx_root_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        check_config(make_cfg("data=idx", f"data.root={tmp_path / 'nowhere'}"))
    root = write_idx_folder(tmp_path / "half")
    (root / (FILES["test_labels"])).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*not found"):
        check_config(make_cfg("data=idx", f"data.root={root}"))


@pytest.mark.slow
@pytest.mark.parametrize("overrides, start", [
    (["data.classes=[2,2]"], "error: data.classes=[2, 2] is not allowed"),
    (["data=idx"], "error: data.root=None is not allowed"),
    (["data.classes=[0,99]"], "error: data.classes=[0, 99]: fashion_mnist has classes 0 to 9"),
    (["data.train_size=2", "data.classes=[0,1,2]"], "error: data.train_size (with"),
    (["data.root=/nowhere/fmnist"], "error: /nowhere/fmnist: data folder does not exist"),
    (["transforms=rotation", "transforms.degrees=400"], "error: transforms.degrees=400 is not"),
])
def test_bad_task_input_on_the_command_line_is_one_line_and_leaves_no_folder(tmp_path,
                                                                              overrides, start):
    run_dir = tmp_path / "run"
    proc = run_cli("fmnist_lab.train", *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


# ---------------------------------------------------------------------------- the experiment


def sweep_jobs_of(*overrides: str) -> list[list[str]]:
    """The jobs `python -m fmnist_lab.train -m OVERRIDES` would launch."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from fmnist_lab.sweep import sweep_jobs
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return sweep_jobs(cfg)


def test_experiment_tasks_runs_each_tasks_fifteen_configurations_once():
    jobs = sweep_jobs_of("experiment=tasks", "task=fmnist_5k", "seed=0")
    changed = [job[-1] for job in jobs]
    assert len(jobs) == 15 and len({tuple(j) for j in jobs}) == 15
    assert changed == [
        "optimizer.lr=0.0001", "optimizer.lr=0.001", "optimizer.lr=0.01", "optimizer.lr=0.1",
        "optimizer.lr=1", "data.batch_size=64", "data.batch_size=256", "data.batch_size=512",
        "init=xavier_uniform", "init=xavier_normal", "init=kaiming_uniform",
        "init=kaiming_normal", "transforms=hflip", "transforms=color_jitter",
        "transforms=rotation"]  # batch 128, init default, standard: the lr 0.01 run


def test_experiment_tasks_spans_seven_tasks_and_three_seeds_and_its_control_three_more():
    jobs = sweep_jobs_of("experiment=tasks")
    assert len(jobs) == 7 * 3 * 15
    control = sweep_jobs_of("experiment=tasks_control")
    assert len(control) == 3 * 15
    assert {j[0] for j in control} == {"task=fmnist_1k"}
    assert {j[1] for j in control} == {"seed=3", "seed=4", "seed=5"}


@pytest.mark.slow
def test_a_one_at_a_time_sweep_names_its_runs_by_the_value_it_moves(tmp_path):
    proc = run_cli("fmnist_lab.train", "-m", "hydra/sweeper=one_at_a_time", "task=digits",
                   "hydra.sweeper.one_at_a_time={optimizer.lr: '0.01,0.1', init: 'default,"
                   "kaiming_normal'}", "trainer.max_epochs=1", "model=three_fc",
                   "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.name for p in tmp_path.rglob("results.json"))
    # lr 0.01 with the default init is the baseline: init=default is not trained again.
    assert runs == ["0_optimizer.lr=0.01", "1_optimizer.lr=0.1", "2_init=kaiming_normal"]


@pytest.mark.slow
def test_make_tasks_runs_the_tasks_and_the_control_then_continues_without_retraining(tmp_path):
    import subprocess

    from tests.conftest import PATIENCE, ROOT

    make = ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "data", "tasks",
            f"TASKS_DIR={tmp_path}", "TASK_ORDER=digits", "TASK_SEEDS=0", "CONTROL_SEEDS=3",
            "ARGS=trainer.max_epochs=1 model=three_fc"]
    first = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE)
    assert first.returncode == 0, first.stderr[-3000:]
    digits = sorted(p.parent.name for p in (tmp_path / "digits/seed_0").rglob("results.json"))
    control = list((tmp_path / "control/seed_3").rglob("results.json"))
    assert len(digits) == 15 and len(control) == 15
    assert "2_optimizer.lr=0.01" in digits and "14_transforms=rotation" in digits
    assert "## The seed's hypothesis, tested" in (tmp_path / "report.md").read_text()
    again = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already completed") + again.stdout.count(
        "already diverged") == 30  # every run found: nothing trained twice


@pytest.mark.slow
def test_a_task_of_ones_own_runs_and_is_described_by_its_own_runs(tmp_path):
    # A task file outside the repository (hydra.searchpath), changed again on the command
    # line, trained for one epoch: the report names it by both, reads its length and steps
    # off its runs, says that fmnist_55k's runs are missing, then borrows the committed
    # record's and says that they ran another length.
    conf = tmp_path / "conf" / "task"
    conf.mkdir(parents=True)
    (conf / "blurry_shoes.yaml").write_text(
        "# @package _global_\n# Three kinds of shoe at 14x14.\n"
        "data:\n  train_size: 300\n  classes: [5, 7, 9]\n  resolution: 14\n")
    sweep = tmp_path / "sweep"
    proc = run_cli("fmnist_lab.train", "experiment=tasks", "task=blurry_shoes", "seed=0",
                   f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data.label_noise=0.1",
                   "data.val_size=300", "data.test_size=300", "trainer.max_epochs=1",
                   "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert len(results) == 15 and {r["num_classes"] for r in results} == {3}
    name = "blurry_shoes (data.label_noise=0.1, data.val_size=300, data.test_size=300)"

    report = run_cli("fmnist_lab.report", str(sweep))
    assert report.returncode == 0, report.stderr
    md = (sweep / "report.md").read_text()
    assert f"1 tasks ({name})" in md and "1 epoch;" in md
    assert f"(batch 128: 3 steps on {name})" in md  # 300 images in batches of 128, 1 epoch
    assert "10 epochs" not in md and "4,300" not in md  # nothing from the tasks record
    assert "**No verdicts yet**" in md and "--tasks results/tasks" in md

    report = run_cli("fmnist_lab.report", str(sweep), "--tasks", "results/tasks")
    assert report.returncode == 0, report.stderr
    md = (sweep / "report.md").read_text()
    assert "fmnist_55k's runs, the reference of every regret, are results/tasks's" in md
    assert "They ran 10 epochs where these tasks ran 1 epoch" in md
    verdicts = md.split("### Verdicts")[1].split("###")[0]
    row = next(line for line in verdicts.splitlines() if line.startswith("| learning rate"))
    assert any(v in row for v in ("moves", "stays", "inconclusive"))
