"""The budget section on made-up runs whose best learning rate is known: lr* found on the
continuous scale, an edge reported as an edge, the step effect that moves and the data effect
that does not, the regret view and the check against a tasks record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fmnist_lab.report import write_report
from fmnist_lab.report.budget import budget_optima, effects, peak
from fmnist_lab.report.runs import load_runs
from tests.conftest import PNG_SIGNATURE
from tests.fakes import write_predictions

IMAGES = 2000
LRS = (0.003, 0.01, 0.03, 0.1, 0.3)
DATA = (1000, 5000, 55000)
STEPS = (80, 400, 2000)


def true_peak(data: int, steps: int, step_slope: float) -> float:
    """log10 lr* of the made-up record: -1 at 80 steps, falling by `step_slope` per decade
    of steps, whatever the data."""
    return -1.0 + step_slope * math.log10(steps / 80)


def write_budget_run(folder: Path, data: int, steps: int, lr: float, seed: int,
                     val_acc: float, rng: np.random.Generator, status: str = "completed") -> Path:
    run = folder / f"d{data}" / f"steps_{steps}" / f"seed_{seed}" / f"lr={lr}"
    run.mkdir(parents=True)
    test_acc = val_acc - 0.01
    result = {
        "status": status, "seed": seed, "num_classes": 10, "train_images": data,
        "history": [{"step": steps, "epoch": steps * 128 / data, "train_loss": 0.5,
                     "val_loss": 0.4, "val_acc": val_acc if status == "completed" else 0.1}],
        "test_acc": test_acc if status == "completed" else None,
        "choices": {"task": {1000: "fmnist_1k", 5000: "fmnist_5k", 55000: "fmnist_55k"}[data],
                    "init": "default", "transforms": "standard"},
        "config": {"name": "budget", "seed": seed, "optimizer": {"lr": lr},
                   "data": {"batch_size": 128, "train_size": data},
                   "trainer": {"max_steps": steps, "max_epochs": -1}},
        "run_key": f"{data}-{steps}-{lr}-{seed}",
    }
    if status == "completed":
        result["predictions"] = write_predictions(run, val_acc, test_acc, rng, IMAGES)
    (run / "results.json").write_text(json.dumps(result))
    return run


def write_record(folder: Path, step_slope: float, seeds=(0, 1, 2)) -> Path:
    """Accuracy a parabola in log10 lr around the true peak, 0.3 points lower per half
    decade squared... steep enough that three seeds pin the peak."""
    rng = np.random.default_rng(0)
    for data in DATA:
        for steps in STEPS:
            for lr in LRS:
                for seed in seeds:
                    gap = math.log10(lr) - true_peak(data, steps, step_slope)
                    val = 0.88 - 0.12 * gap ** 2 + 0.002 * (seed - 1)
                    write_budget_run(folder, data, steps, lr, seed, val, rng)
    return folder


def test_the_peak_of_a_parabola_is_its_vertex():
    grid = np.log10(LRS)
    accuracy = 0.9 - (grid + 1.3) ** 2
    assert peak(grid, accuracy, [0, 1, 2, 3, 4]) == (pytest.approx(-1.3), 0)
    assert peak(grid, -grid, [0, 1, 2, 3, 4]) == (pytest.approx(grid[0]), -1)  # the edge
    assert peak(grid, grid, [0, 1, 2, 3, 4]) == (pytest.approx(grid[-1]), 1)
    # A best value whose neighbour diverged: still a vertex between them, pulled its way.
    assert grid[2] <= peak(grid, np.array([0.5, 0.7, 0.8, 0.79, 0.1]), [0, 1, 2, 3])[0] \
        < grid[3]


@pytest.fixture(scope="module")
def falling(tmp_path_factory) -> Path:
    """lr* falls ten times over 25× more steps (slope -0.715 a decade), whatever the data."""
    return write_record(tmp_path_factory.mktemp("budget"), step_slope=-1 / math.log10(25))


def test_lr_star_is_found_between_grid_values_with_an_interval(falling):
    _, optima, _ = budget_optima(load_runs(falling))
    assert len(optima) == 9
    for (data, steps), o in optima.items():
        expected = true_peak(data, steps, -1 / math.log10(25))
        lo, hi = o.bounds()
        assert o.edge == 0 and abs(o.log_lr - expected) < 0.08, (data, steps)
        assert lo <= o.log_lr <= hi and hi - lo < 0.5


def test_the_step_effect_moves_and_the_data_effect_does_not(falling):
    _, _, found = budget_optima(load_runs(falling))
    data, steps = found
    assert steps.point == pytest.approx(-1.0, abs=0.1)  # lr* ten times smaller over 25x
    assert steps.verdict == "moves"
    assert abs(data.point) < 0.1 and data.verdict == "does not move"
    assert math.log10(55) == pytest.approx(data.span) and math.log10(25) == pytest.approx(
        steps.span)


def test_an_optimum_at_the_grid_edge_is_a_bound_and_blocks_does_not_move(tmp_path):
    # lr* rising with steps past the grid: the longest budgets peak beyond 0.3.
    record = write_record(tmp_path, step_slope=0.6, seeds=(0, 1))
    cells, optima, found = budget_optima(load_runs(record))
    edge = optima[(1000, 2000)]
    assert edge.edge == 1 and edge.text() == "≥ 0.3"
    assert found[0].verdict == "inconclusive"  # data: no effect, but an edge cell


def test_a_cell_missing_a_run_is_left_out_until_it_has_one(tmp_path):
    record = write_record(tmp_path, step_slope=0.0, seeds=(0,))
    (next(record.rglob("lr=0.03")) / "results.json").unlink()
    _, optima, _ = budget_optima(load_runs(record))
    assert len(optima) == 8


def test_effects_need_two_sizes_of_each():
    assert effects([]) is None


def test_the_section_answers_with_tables_figures_and_the_tasks_check(falling, tmp_path):
    # A tasks record whose fmnist_1k runs at lr 0.01 and 0.1 are the budget cell's own.
    tasks = tmp_path / "tasks"
    for run in load_runs(falling):
        if run.result["train_images"] == 1000 and run.params["trainer.max_steps"] == 80 \
                and run.params["optimizer.lr"] in (0.01, 0.1):
            twin = json.loads((run.path / "results.json").read_text())
            twin["config"]["name"] = "tasks"
            twin["history"] = [dict(twin["history"][0], epoch=e) for e in range(1, 11)]
            out = tasks / run.path.relative_to(falling)
            out.mkdir(parents=True)
            (out / "results.json").write_text(json.dumps(twin))
    report = write_report(falling, tasks_root=tasks)
    md = report.markdown.read_text()
    section = md.split("## Data or steps?")[1]
    assert "**The rule** (fixed before the runs were looked at)" in section
    assert "| 1,000 images | 0.1 [" in section  # lr* at 80 steps: 10^-1
    assert "steps (25× across the grid) | ×0.1" in section and "**moves**" in section
    assert "**does not move**" in section
    assert "### The tasks rule on these cells" in section and "reference" in section
    assert "identical at every seed" in section and section.count("(10 epochs)") == 6
    for name in ("budget_accuracy.png", "budget_optimum.png"):
        assert (falling / name).read_bytes().startswith(PNG_SIGNATURE)
    assert "## budget:" not in md  # no generic sweep table besides the section
    # The same runs give the same report, byte for byte.
    assert write_report(falling, tasks_root=tasks).markdown.read_text() == md


def test_repeated_cells_from_another_machine_are_judged_against_the_noise(falling, tmp_path):
    # The tasks record's twins trained on another CPU: a few tenths apart, seeds 1 point apart.
    tasks = tmp_path / "tasks"
    for run in load_runs(falling):
        if run.result["train_images"] == 5000 and run.params["trainer.max_steps"] == 400 \
                and run.params["optimizer.lr"] in (0.01, 0.1):
            twin = json.loads((run.path / "results.json").read_text())
            seed = twin["seed"]
            twin.update(machine={"cpu": "AMD EPYC"}, test_acc=twin["test_acc"] + 0.003 * seed)
            twin["config"]["name"] = "tasks"
            out = tasks / run.path.relative_to(falling)
            out.mkdir(parents=True)
            (out / "results.json").write_text(json.dumps(twin))
    section = write_report(falling, tasks_root=tasks).markdown.read_text().split(
        "### The cells that repeat the tasks protocol")[1]
    assert "they differ by up to 0.60 points of test accuracy (mean 0.30)" in section
    assert "beyond the noise" in section  # the made-up seeds differ by 0.3 points only
    assert "the tasks record ran on AMD EPYC, this record on an unrecorded CPU" in section


def test_the_front_pages_budget_tables_are_regenerated_from_the_record(falling, tmp_path):
    from fmnist_lab.report.docs import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nlr* (record: `budget`):\n\n| training images |\n|---|\n| old |\n"
                      "\n| effect |\n|---|\n| old |\n\nEnd.\n")
    assert update_readme(readme, falling)
    text = readme.read_text()
    assert "| old |" not in text and text.endswith("\n\nEnd.\n")
    assert "| 55,000 images | 0.1 [" in text and "**steps effect** (across 25×)" in text
    assert not update_readme(readme, falling)  # already current, both tables


BUDGET = Path(__file__).resolve().parents[1] / "results" / "budget"
TASK_IMAGES = {"fmnist_1k": 1000, "fmnist_5k": 5000, "fmnist_55k": 55000}


def test_the_committed_budget_record_holds_every_run_once():
    from collections import Counter

    runs = [json.loads(p.read_text()) for p in BUDGET.rglob("results.json")]
    trained = [r["run_key"] for r in runs]
    assert len(trained) == len(set(trained)) == 135, "a configuration and seed trained twice"
    count = Counter((r["choices"]["task"], r["config"]["trainer"]["max_steps"], r["seed"])
                    for r in runs)
    assert count == {(t, n, s): 5 for t in TASK_IMAGES for n in STEPS for s in (0, 1, 2)}
    for r in runs:
        assert r["status"] in ("completed", "diverged") and not r.get("reused_from")
        assert r["train_images"] == TASK_IMAGES[r["choices"]["task"]]
        assert r["config"]["optimizer"]["lr"] in LRS
        if r["status"] == "completed":  # exactly its budget, validated ten times
            steps = r["config"]["trainer"]["max_steps"]
            assert [e["step"] for e in r["history"]] == [steps // 10 * k for k in range(1, 11)]


@pytest.mark.slow  # bootstraps every cell
def test_the_committed_budget_record_regenerates_its_report_exactly(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "budget"
    shutil.copytree(BUDGET, copy)
    (copy / "report.md").unlink()
    monkeypatch.chdir(BUDGET.parents[1])  # as make budget names it: --tasks results/tasks
    write_report(copy, tasks_root=Path("results/tasks"))
    assert (copy / "report.md").read_text() == (BUDGET / "report.md").read_text()
