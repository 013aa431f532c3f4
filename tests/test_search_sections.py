"""The report's sweep sections for optuna searches and their best configurations: each search
(each folder with its own study) gets a section of its own, never one pooled by configuration
with another search of the same experiment; and the "held fixed" line names what a best
configuration tuned (optimizer, schedule, label smoothing, dropout), not only the seed's keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmnist_lab.report import write_report
from fmnist_lab.report.runs import group_sweeps, load_runs
from fmnist_lab.report.tables import held_fixed_line
from tests.conftest import ROOT
from tests.fakes import fake_result, lr_sweep_folder


def trial(lr: float, val_acc: float) -> dict[str, Any]:
    """A trial of hparams_search=optuna at `lr`, as its run records it. Two searches with
    the same sampler seed try the same first configurations: same config, same run key."""
    result = fake_result("optuna", {"optimizer.lr": lr}, 0, val_acc=val_acc)
    result["choices"]["hparams_search"] = "optuna"
    result["run_key"] = f"trial-lr-{lr}"
    return result


def write_runs(folder: Path, results: list[dict[str, Any]]) -> None:
    for num, result in enumerate(results):
        (folder / f"{num}_run").mkdir(parents=True)
        (folder / f"{num}_run" / "results.json").write_text(json.dumps(result))


def two_searches(root: Path) -> Path:
    """`median` stopped after two trials; `none` tried those two and a third."""
    write_runs(root / "median", [trial(0.01, 0.88), trial(0.1, 0.85)])
    write_runs(root / "none", [trial(0.01, 0.88), trial(0.1, 0.85), trial(0.001, 0.80)])
    return root


def test_each_search_is_a_sweep_of_its_own_named_by_its_folder(tmp_path):
    sweeps = group_sweeps(load_runs(two_searches(tmp_path)), tmp_path)
    assert [(s.name, len(s.runs), len(s.rows)) for s in sweeps] == [
        ("optuna (median)", 2, 2), ("optuna (none)", 3, 3)]
    # A configuration both searches tried is one trial in each, not two seeds of one row.
    assert all(len(row.runs) == 1 for s in sweeps for row in s.rows)


def test_the_report_has_a_section_and_a_figure_per_search(tmp_path):
    report = write_report(two_searches(tmp_path))
    md = report.markdown.read_text()
    assert "## optuna (median): optimizer.lr" in md and "## optuna (none): optimizer.lr" in md
    median = md[md.index("## optuna (median)"):md.index("## optuna (none)")]
    assert "2 runs; held fixed" in median and "| 0.001 |" not in median
    assert {p.name for p in report.figures} >= {"optuna_median_loss.png", "optuna_none_loss.png"}


def test_a_single_search_keeps_the_experiments_name(tmp_path):
    write_runs(tmp_path / "median", [trial(0.01, 0.88), trial(0.1, 0.85)])
    assert [s.name for s in group_sweeps(load_runs(tmp_path), tmp_path)] == ["optuna"]


def best_configuration(seed: int) -> dict[str, Any]:
    """A best configuration retrained (make search): AdamW (no momentum), a cosine schedule,
    label smoothing and dropout, as an optuna trial chose them."""
    result = fake_result("best_median", {"optimizer.lr": 0.0046, "data.batch_size": 64}, seed)
    result["choices"] |= {"optimizer": "adamw", "scheduler": "cosine", "task": "fmnist_5k"}
    config = result["config"]
    config["optimizer"] = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.0046,
                           "weight_decay": 5e-06}
    config["scheduler"] = {"_target_": "fmnist_lab.schedules.warmup_cosine", "warmup": 0.05}
    config["loss"] = {"label_smoothing": 0.018}
    config["model"]["dropout"] = 0.28
    return result


def test_held_fixed_names_what_a_best_configuration_tuned(tmp_path):
    write_runs(tmp_path / "best", [best_configuration(seed) for seed in (0, 1, 2)])
    line = held_fixed_line(group_sweeps(load_runs(tmp_path))[0])
    assert line == (
        "3 runs; held fixed: task=fmnist_5k, model=two_conv_one_fc, model.dropout=0.28, "
        "init=default, transforms=standard, optimizer=adamw, optimizer.lr=0.0046, "
        "optimizer.weight_decay=5e-06, scheduler=cosine, loss.label_smoothing=0.018, "
        "data.batch_size=64, data.train_size=null, trainer.max_epochs=3; seeds: 0, 1, 2.")


def test_held_fixed_leaves_out_the_seeds_recipe_where_a_sweep_kept_it(tmp_path):
    # SGD without a schedule, smoothing or dropout: what every seed-study run did.
    line = held_fixed_line(group_sweeps(load_runs(lr_sweep_folder(tmp_path)))[0])
    assert line == ("8 runs; held fixed: model=two_conv_one_fc, init=default, "
                    "transforms=standard, optimizer.momentum=0.9, data.batch_size=128, "
                    "data.train_size=null, trainer.max_epochs=3; seeds: 0, 1.")


def test_the_committed_search_report_has_each_search_and_what_its_best_tuned():
    md = (ROOT / "results" / "search" / "report.md").read_text()
    for search in ("median", "none"):
        section = md[md.index(f"## optuna ({search}):"):]
        assert section.split("\n\n")[1].startswith("40 runs; held fixed: task=fmnist_5k")
        best = md[md.index(f"## best_{search}:"):].split("\n\n")[1]
        assert all(f"{key}=" in best for key in ("optimizer", "scheduler",
                                                 "loss.label_smoothing", "model.dropout"))
        assert "momentum" not in best  # AdamW has none
    assert "## optuna:" not in md  # no section pooling the two searches
