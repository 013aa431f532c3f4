"""Tunability (report.tunability) on made-up task records: a setting every task agrees on
gains nothing from tuning; one where the tasks disagree gains each task its own best minus
the shared default, picked by mean validation accuracy over the tasks (not by how many tasks
a value wins), never a value that diverged somewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmnist_lab.report import write_report
from fmnist_lab.report.runs import load_runs
from fmnist_lab.report.task_runs import REFERENCE, group_tasks
from fmnist_lab.report.tasks import all_regrets
from fmnist_lab.report.tunability import Tunability, all_tunability, tunability_lines
from tests.fakes import write_predictions

IMAGES = 1000  # validation and test images of a made-up task
SEEDS = (0, 1, 2)


def write_run(folder: Path, task: str, seed: int, lr: float, val_acc: float | None,
              test_acc: float | None, rng: np.random.Generator) -> None:
    """A run of experiment=tasks at `lr`, the other settings at their baseline; right on
    exactly `val_acc` / `test_acc` of its images (predictions.npz), except on fmnist_55k,
    which keeps none (results/study's runs); diverged where the accuracies are None."""
    run = folder / task / f"seed_{seed}" / f"lr={lr}"
    run.mkdir(parents=True)
    result = {"seed": seed, "num_classes": 10,
              "choices": {"task": task, "init": "default", "transforms": "standard"},
              "config": {"name": "tasks", "seed": seed, "optimizer": {"lr": lr},
                         "data": {"batch_size": 128}},
              "run_key": f"{task}-{seed}-{lr}"}
    if val_acc is None:
        result |= {"status": "diverged", "diverged_epoch": 1, "test_acc": None,
                   "history": [{"epoch": 1, "train_loss": float("nan"), "val_acc": 0.1}]}
    else:
        result |= {"status": "completed", "test_acc": test_acc,
                   "history": [{"epoch": 1, "train_loss": 0.5, "val_acc": val_acc}]}
    if val_acc is not None and task != REFERENCE:
        result["predictions"] = write_predictions(run, val_acc, test_acc, rng, IMAGES)
    (run / "results.json").write_text(json.dumps(result))


def write_record(folder: Path, accuracies: dict[str, dict[float, tuple | None]]) -> Path:
    """task -> lr -> (validation, test) accuracy at every seed (None: diverged at every
    seed); seeds scatter by a few tenths of a point, as real ones do."""
    rng = np.random.default_rng(3)
    for task, by_lr in accuracies.items():
        for seed in SEEDS:
            for lr, accs in by_lr.items():
                jitter = 0.002 * (seed - 1)
                val, test = (None, None) if accs is None else (accs[0] + jitter,
                                                               accs[1] + jitter)
                write_run(folder, task, seed, lr, val, test, rng)
    return folder


def learning_rate(record: Path) -> Tunability:
    found = all_tunability(group_tasks(load_runs(record)))
    return next(t for t in found if t.key == "optimizer.lr")


def test_a_setting_every_task_agrees_on_is_not_worth_tuning(tmp_path):
    record = write_record(tmp_path, {
        REFERENCE: {0.01: (0.92, 0.91), 0.1: (0.88, 0.87)},
        "small": {0.01: (0.80, 0.79), 0.1: (0.75, 0.74)},
        "noisy": {0.01: (0.70, 0.69), 0.1: (0.60, 0.59)}})
    lr = learning_rate(record)
    assert lr.default == 0.01
    assert lr.per_task == pytest.approx({REFERENCE: 0.0, "small": 0.0, "noisy": 0.0})
    assert lr.mean == pytest.approx(0.0)
    low, high = lr.bounds()
    assert -0.005 < low <= 0.0 <= high < 0.005
    assert lr.seeds_only == [REFERENCE]  # no predictions kept: resampled by seed only
    # fmnist_55k's best is the shared default: carrying either costs nothing.
    assert lr.reference == pytest.approx(0.0) and lr.held_out == pytest.approx(0.0)
    assert "not worth it: learning rate (+0.00" in tunability_lines([lr])[0]


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory) -> Path:
    """Between lr 0.01 and 0.1, three tasks prefer 0.1 by a point of validation accuracy and
    `wide` prefers 0.01 by twenty: 0.1 wins more tasks, 0.01 has the better mean, so 0.01 is
    the default. lr 1 is best wherever it completes, but it diverges on `wide`: no default."""
    return write_record(tmp_path_factory.mktemp("tasks"), {
        REFERENCE: {0.01: (0.90, 0.90), 0.1: (0.91, 0.91), 1: (0.95, 0.95)},
        "fast": {0.01: (0.79, 0.78), 0.1: (0.80, 0.81), 1: (0.97, 0.97)},
        "also_fast": {0.01: (0.79, 0.79), 0.1: (0.80, 0.83), 1: (0.97, 0.97)},
        "wide": {0.01: (0.80, 0.80), 0.1: (0.60, 0.60), 1: None}})


def test_the_shared_default_has_the_best_mean_validation_accuracy_among_values_that_never_diverged(
        disagreeing):
    lr = learning_rate(disagreeing)
    assert lr.default == 0.01
    assert lr.own_best == {REFERENCE: 1, "fast": 1, "also_fast": 1, "wide": 0.01}


def test_each_task_gains_its_own_best_minus_the_shared_default(disagreeing):
    lr = learning_rate(disagreeing)
    expected = {REFERENCE: 0.05, "fast": 0.19, "also_fast": 0.18, "wide": 0.0}
    assert lr.per_task == pytest.approx(expected, abs=1e-9)
    assert lr.mean == pytest.approx(np.mean(list(expected.values())))
    low, high = lr.bounds()
    assert 0.01 < low < lr.mean < high
    assert "worth tuning per task: learning rate (+10.50" in tunability_lines([lr])[0]


def test_the_regrets_beside_it_match_the_transfer_regret_and_pick_the_default_without_the_task(
        disagreeing):
    grouped = group_tasks(load_runs(disagreeing))
    lr = learning_rate(disagreeing)
    regrets = [r for r in all_regrets(grouped)[0] if r.key == "optimizer.lr"]
    assert lr.reference == pytest.approx(np.mean([r.mean for r in regrets]))
    # fmnist_55k's best, lr 1, diverges on `wide`: carried there it scores chance (0.1).
    assert lr.reference == pytest.approx(np.mean([0.0, 0.0, 0.80 - 0.1]))
    # Without `wide`, lr 1 never diverged and has the best mean: carried to `wide` it scores
    # chance too; without `fast` (or `also_fast`), 0.01 is the default and loses 0.19 (0.18).
    assert lr.held_out == pytest.approx(np.mean([0.19, 0.18, 0.80 - 0.1]))


def test_the_tasks_section_has_the_tunability_table(disagreeing):
    md = write_report(disagreeing).markdown.read_text()
    section = md[md.index("### Tunability"):md.index("### Rank agreement")]
    assert "Probst, Boulesteix & Bischl" in section and "fmnist_55k: its runs" in section
    row = next(line for line in section.splitlines() if line.startswith("| learning rate"))
    assert row.startswith("| learning rate | `0.01` | +5.00 | +18.00 | +19.00 | +0.00 | **+10.50**")
    assert "**Worth tuning per task?**" in section
    assert "transfer better than fmnist_55k's best?**" in section


def test_the_front_pages_tunability_table_is_regenerated_from_the_record(disagreeing, tmp_path):
    from fmnist_lab.report.docs import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nTunability (record: `tunability`):\n\n| setting |\n|---|\n"
                      "| old |\n\nEnd.\n")
    assert update_readme(readme, disagreeing)
    row = next(line for line in readme.read_text().splitlines()
               if line.startswith("| learning rate"))
    assert row.startswith("| learning rate | `0.01` | +10.50 [")
    assert not update_readme(readme, disagreeing)  # already current
