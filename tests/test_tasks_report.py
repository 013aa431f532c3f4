"""The tasks section's verdict rule on made-up runs: an optimum that moves, one that stays,
and two values that tie on validation where the verdict must be inconclusive; and the
committed record, results/tasks: every run once, and a report that regenerates exactly."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fmnist_lab.report import write_report
from fmnist_lab.report.runs import load_runs
from fmnist_lab.report.stats import holm
from fmnist_lab.report.task_runs import group_tasks
from fmnist_lab.report.tasks import all_regrets
from fmnist_lab.report.transfer import DELTA
from tests.conftest import PNG_SIGNATURE, ROOT
from tests.fakes import write_predictions

IMAGES = 1000  # validation and test images a made-up task evaluates on
BASELINE = {"optimizer.lr": 0.01, "data.batch_size": 128, "init": "default",
            "transforms": "standard"}


def write_run(folder: Path, task: str, seed: int, lr: float, val_acc: float, test_acc: float,
              rng: np.random.Generator, name: str = "tasks",
              predictions: bool = True) -> None:
    """A run of experiment=tasks at `lr` (the other settings at the baseline) whose
    predictions are right on a random `val_acc` / `test_acc` share of the images."""
    run = folder / task / f"seed_{seed}" / f"lr={lr}"
    run.mkdir(parents=True)
    result = {
        "status": "completed", "seed": seed, "num_classes": 10,
        "history": [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_acc": val_acc}],
        "test_acc": test_acc,
        "choices": {"task": task, "init": "default", "transforms": "standard"},
        "config": {"name": name, "seed": seed, "optimizer": {"lr": lr},
                   "data": {"batch_size": 128}},
        "run_key": f"{task}-{seed}-{lr}",
    }
    if predictions:
        result["predictions"] = write_predictions(run, val_acc, test_acc, rng, IMAGES)
    (run / "results.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    """fmnist_55k (no predictions, as results/study's) prefers lr 0.01; on `moved` lr 0.1 is
    far better; on `kept` 0.01 stays best; on `tied` the two tie on validation and differ
    by twice the margin on test, so which one a resample picks decides the regret."""
    folder = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(1)
    accuracies = {  # task -> lr -> (validation, test) accuracy at every seed
        "fmnist_55k": {0.01: (0.92, 0.915), 0.1: (0.90, 0.90)},
        "moved": {0.01: (0.70, 0.70), 0.1: (0.82, 0.81)},
        "kept": {0.01: (0.85, 0.85), 0.1: (0.80, 0.80)},
        "tied": {0.01: (0.80, 0.80), 0.1: (0.80, 0.80 + 2 * DELTA)},
    }
    for task, by_lr in accuracies.items():
        for seed in (0, 1, 2):
            for lr, (val, test) in by_lr.items():
                # Seeds scatter by a few tenths of a point, as real ones do.
                jitter = 0.003 * (seed - 1)
                write_run(folder, task, seed, lr, val + jitter, test + jitter, rng,
                          predictions=task != "fmnist_55k")
    return folder


@pytest.fixture(scope="module")
def regrets(record: Path) -> list:
    return all_regrets(group_tasks(load_runs(record)))[0]


def test_an_optimum_that_moves_stays_or_ties_gets_its_verdict(regrets):
    found = {(r.task, r.key): r.verdict for r in regrets}
    assert found[("moved", "optimizer.lr")] == "moves"
    assert found[("kept", "optimizer.lr")] == "stays"
    assert found[("tied", "optimizer.lr")] == "inconclusive"
    # A setting a task never moved (one value: the baseline) is carried at no cost.
    assert found[("moved", "init")] == "stays"


def test_the_regret_is_the_test_accuracy_given_up_by_carrying_fmnist_55ks_best(regrets):
    moved = next(r for r in regrets if (r.task, r.key) == ("moved", "optimizer.lr"))
    assert moved.own_best == 0.1 and moved.reference_best == 0.01
    assert moved.mean == pytest.approx(0.11, abs=0.002)
    low, high = moved.bounds()
    assert DELTA < low < moved.mean < high


def test_the_report_shows_the_verdicts_and_the_heatmap(record: Path):
    report = write_report(record)
    md = report.markdown.read_text()
    assert "## The seed's hypothesis, tested" in md
    assert "**moves**" in md and "**stays**" in md and "**inconclusive**" in md
    assert "δ = 1.0 points" in md and "Holm" in md
    heatmap = record / "tasks_heatmaps.png"
    assert heatmap in report.figures and heatmap.read_bytes()[:8] == PNG_SIGNATURE
    (record / "report.md").unlink()
    assert write_report(record).markdown.read_text() == md  # the same runs, the same report


def test_holm_adjusts_the_smallest_p_the_most():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_the_front_pages_verdict_table_is_regenerated_from_the_record(record: Path, tmp_path):
    from fmnist_lab.report.docs import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nVerdicts (record: `tasks`):\n\n| setting |\n|---|\n| old |\n\nEnd.\n")
    assert update_readme(readme, record)
    text = readme.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| learning rate")]
    assert len(rows) == 1 and "`0.1` +11" in rows[0] and "moves" in rows[0]
    assert "| old |" not in text and text.endswith("End.\n")
    assert not update_readme(readme, record)  # already current


TASKS = ROOT / "results" / "tasks"
# The record's tasks: their training images and output width (fmnist_55k's runs are
# results/study's, reused, recorded before results.json carried num_classes).
TRAIN_IMAGES = {"fmnist_55k": (55_000, None), "fmnist_5k": (5000, 10), "fmnist_1k": (1000, 10),
                "fmnist_5k_noisy": (5000, 10), "fmnist_5k_7px": (5000, 10),
                "fmnist_5k_upper": (5000, 4), "digits": (1079, 10)}


def test_the_committed_tasks_record_holds_every_run_once():
    runs = [json.loads(p.read_text()) for p in TASKS.rglob("results.json")]
    trained = [r["run_key"] for r in runs if not r.get("reused_from")]
    assert len(trained) == len(set(trained)), "a configuration and seed trained twice"
    assert all(r["status"] in ("completed", "diverged") for r in runs)
    # Fifteen configurations (the baseline and fourteen values moved one at a time) a seed:
    # seeds 0-2 on each of the seven tasks, the control's seeds 3-5 on fmnist_1k.
    count = Counter((r["config"]["name"], r["choices"]["task"], r["seed"]) for r in runs)
    expected = {("tasks", task, seed): 15 for task in TRAIN_IMAGES for seed in (0, 1, 2)}
    expected |= {("tasks_control", "fmnist_1k", seed): 15 for seed in (3, 4, 5)}
    assert dict(count) == expected
    for r in runs:
        task = r["choices"]["task"]
        assert (r["train_images"], r.get("num_classes")) == TRAIN_IMAGES[task]
        assert bool(r.get("reused_from")) == (task == "fmnist_55k")


@pytest.mark.slow  # bootstraps every task's verdicts
def test_the_committed_tasks_record_regenerates_its_report_exactly(tmp_path):
    copy = tmp_path / "tasks"
    shutil.copytree(TASKS, copy)
    (copy / "report.md").unlink()
    write_report(copy)
    assert (copy / "report.md").read_text() == (TASKS / "report.md").read_text()
