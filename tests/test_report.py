"""`python -m fmnist_lab.report`: tables, CSV and figures from fabricated and real sweeps."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fmnist_lab.report import write_report
from fmnist_lab.report.figures import band_text, use_log_scale
from fmnist_lab.report.runs import group_sweeps, load_runs
from fmnist_lab.report.stats import spearman
from tests.conftest import PATIENCE, PNG_SIGNATURE, ROOT, column, run_cli, table
from tests.fakes import cv_sweep, fake_result, write_sweep


def test_rows_are_mean_and_std_over_seeds(lr_sweep: Path):
    md = write_report(lr_sweep).markdown.read_text()
    rows = table(md, "learning_rate: optimizer.lr")
    assert list(rows)[1:] == ["0.001", "0.01", "0.1", "1"]  # numeric order
    assert column(rows, "0.01", "n") == "2"
    assert column(rows, "0.01", "status") == "2 completed"
    assert column(rows, "0.01", "val acc % ep 3") == "91.00 ± 1.41"
    assert column(rows, "0.01", "val acc % ep 1") == "81.00 ± 1.41"
    assert column(rows, "0.01", "test acc %") == "90.00 ± 1.41"
    assert column(rows, "0.01", "train loss ep 1") == "1.5000 ± 0.7071"
    assert column(rows, "0.01", "train loss ep 3") == "0.7000 ± 0.7071"
    assert column(rows, "0.1", "val acc % ep 3") == "85.00 ± 0.00"
    assert column(rows, "0.01", "params") == "1,625,866"
    assert column(rows, "0.01", "seconds") == "6.0"
    # 91.00 vs 85.00: a 6-point lead over a combined std of 1.41 points.
    assert "`0.01`" in md and "ahead of `0.1`" in md
    assert "exceeds the seed-to-seed noise (combined std 1.41 points)" in md


def test_a_run_reused_within_its_own_experiment_counts_once(tmp_path: Path):
    # A search's best run (seed 0), then the recipe's seeds 0-2 in another folder, seed 0
    # reused from the search: the row holds three runs, not four.
    search = fake_result("tuned", {"data.batch_size": 64}, 0, val_acc=0.93)
    recipe = [fake_result("tuned", {"data.batch_size": 64}, seed, val_acc=0.93 + seed / 100)
              for seed in (0, 1, 2)]
    for result in [search, *recipe]:
        result["run_key"] = f"key{result['seed']}"
    recipe[0]["reused_from"] = "../../search/0_data.batch_size=64"
    write_sweep(tmp_path / "search", [search])
    write_sweep(tmp_path / "recipe", recipe)
    md = write_report(tmp_path).markdown.read_text()
    rows = table(md, "tuned")
    assert column(rows, "(all runs)", "n") == "3"
    assert column(rows, "(all runs)", "val acc % ep 3") == "94.00 ± 1.00"
    assert "shares its" not in md


def test_diverged_value_shows_as_diverged(lr_sweep: Path):
    rows = table(write_report(lr_sweep).markdown.read_text(), "learning_rate")
    assert column(rows, "1", "status") == "2 diverged (epoch 2)"
    assert column(rows, "1", "n") == "0"
    assert column(rows, "1", "val acc % ep 3") == "—"


def test_single_seed_diverged_and_failed(tmp_path: Path):
    sweep = write_sweep(tmp_path, [
        fake_result("learning_rate", {"optimizer.lr": 0.01}, val_acc=0.9),
        fake_result("learning_rate", {"optimizer.lr": 0.1}, val_acc=0.8),
        fake_result("learning_rate", {"optimizer.lr": 0.5}, status="failed"),
        fake_result("learning_rate", {"optimizer.lr": 1}, status="diverged", diverged_epoch=1),
    ])
    md = write_report(sweep).markdown.read_text()
    rows = table(md, "learning_rate")
    assert column(rows, "1", "status") == "diverged (epoch 1)"
    assert column(rows, "0.5", "status") == "failed"
    assert column(rows, "0.01", "status") == "completed"
    assert "n=1: no noise estimate" in md
    assert "failed: `0.5` seed 0: RuntimeError: boom" in md


def test_groups_are_named_by_their_choice(tmp_path: Path):
    write_sweep(tmp_path / "architecture", [
        fake_result("architecture", {"model": m}, s) for m in ("two_conv_one_fc", "three_fc")
        for s in (0, 1)])
    # The default `standard` has no override: named by the choice Hydra recorded.
    standard = fake_result("augmentation", {})
    write_sweep(tmp_path / "augmentation", [standard, fake_result("augmentation",
                                                                  {"transforms": "hflip"})])
    report = write_report(tmp_path)
    assert [p.name for p in report.figures] == ["architecture_loss.png", "augmentation_loss.png"]
    md = report.markdown.read_text()
    arch = table(md, "architecture: model\n")
    assert list(arch)[1:] == ["two_conv_one_fc", "three_fc"]  # the order the sweep ran
    assert column(arch, "three_fc", "params") == "94,154"
    aug = table(md, "augmentation: transforms\n")  # transforms.p goes with the choice
    assert list(aug)[1:] == ["standard", "hflip"]
    assert md.index("## architecture") < md.index("## augmentation")  # the seed's order


def test_sweeps_of_one_experiment_in_several_folders_merge(tmp_path: Path):
    # Seeds launched one at a time land in separate sweep folders: one table, n=2.
    for seed in (0, 1):
        write_sweep(tmp_path / f"sweep{seed}", [
            fake_result("batch_size", {"data.batch_size": b}, seed) for b in (512, 64)])
    # A sweep with other settings (one epoch more) is told apart by that setting.
    write_sweep(tmp_path / "longer", [fake_result("batch_size", {
        "data.batch_size": 64, "trainer.max_epochs": 4}, train_losses=(1, 0.5, 0.3, 0.2))])
    rows = table(write_report(tmp_path).markdown.read_text(),
                 "batch_size: data.batch_size, trainer.max_epochs")
    assert list(rows)[1:] == ["64, 3", "64, 4", "512, 3"]
    assert column(rows, "64, 3", "n") == "2" and column(rows, "64, 4", "n") == "1"


def test_csv_has_one_row_per_run_with_config_columns(lr_sweep: Path):
    report = write_report(lr_sweep)
    with report.csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {"path", "status", "seed", "test_acc", "last_val_acc", "ep1_train_loss", "seconds",
            "train_images_per_second", "optimizer.lr", "data.batch_size", "model._target_",
            "trainer.max_epochs"} <= rows[0].keys()
    assert sorted(r["optimizer.lr"] for r in rows) == ["0.001"] * 2 + ["0.01"] * 2 + ["0.1"] * 2 + [
        "1"] * 2
    assert sum(r["status"] == "diverged" for r in rows) == 2


def test_figures_are_valid_pngs(lr_sweep: Path):
    from matplotlib.image import imread

    report = write_report(lr_sweep, log_y=True)
    assert [p.name for p in report.figures] == ["learning_rate_loss.png"]
    assert report.figures[0].read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(report.figures[0]).shape
    assert width > 1000 and height > 400
    assert "![learning_rate: loss against epoch](learning_rate_loss.png)" in (
        report.markdown.read_text())


def test_log_scale_only_where_values_span_decades():
    assert use_log_scale([0.3, 2.3, 1e4])
    assert not use_log_scale([0.3, 2.3])
    assert use_log_scale([0.3, 2.3], forced=True)
    assert not use_log_scale([])




def test_cross_validation_table_has_fold_rows_and_a_mean_row(tmp_path: Path):
    md = write_report(cv_sweep(tmp_path, [0.86, 0.88, 0.85, 0.87, 0.86])).markdown.read_text()
    rows = table(md, "cross_validation: data.fold")
    assert list(rows)[1:] == ["0", "1", "2", "3", "4", "**mean ± std**"]
    assert column(rows, "0", "fold acc % ep 3") == "86.50 ± 0.71"  # over two seeds
    # Over the five folds' means 86.5, 88.5, 85.5, 87.5, 86.5.
    assert column(rows, "**mean ± std**", "fold acc % ep 3") == "86.90 ± 1.14"
    assert "spread 3.00 points" in md and "no climb with fold order" in md




def test_cross_validation_flags_a_climb(tmp_path: Path):
    md = write_report(cv_sweep(tmp_path, [0.91, 0.94, 0.96, 0.97, 0.99], seeds=(0,))).markdown
    assert "climbs with the fold index (Spearman ρ = 1.00)" in md.read_text()


def test_spearman_handles_ties_and_constants():
    assert spearman([0, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [0.5, 0.5, 0.5]) is None
    assert -1 < spearman([0, 1, 2, 3], [0.5, 0.5, 0.6, 0.4]) < 1


def test_compare_md_becomes_a_section(lr_sweep: Path):
    compare = lr_sweep.parent / "compare_run"
    compare.mkdir()
    (compare / "compare.md").write_text(
        "# Comparison\n\nCKA 0.71\n\n## Heatmaps\n\n![heatmap](corr.png)\n")
    md = write_report(lr_sweep.parent).markdown.read_text()
    assert "\n## Comparison\n\nFrom `compare_run/compare.md`.\n" in md  # # -> ## for the report
    assert "CKA 0.71" in md
    assert "### Heatmaps" in md and "![heatmap](compare_run/corr.png)" in md


# Run in a fresh interpreter where importing any of these fails, as where they are not
# installed: the report must still read a study and write its tables and figures.
WITHOUT_TORCH = """
import runpy, sys

BLOCKED = {"torch", "torchvision", "torchmetrics", "pytorch_lightning", "lightning",
           "lightning_fabric", "hydra", "omegaconf"}

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["report", sys.argv[1]]
runpy.run_module("fmnist_lab.report", run_name="__main__")
"""


def test_report_runs_where_torch_is_not_installed(lr_sweep: Path):
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(lr_sweep)],
                          cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "blocked" not in proc.stderr
    assert table((lr_sweep / "report.md").read_text(), "learning_rate")["header"]
    assert (lr_sweep / "results.csv").is_file()
    assert (lr_sweep / "learning_rate_loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_the_loss_figure_says_over_how_many_seeds(tmp_path: Path):
    def band(seeds_by_lr: dict[float, tuple[int, ...]]) -> str:
        folder = write_sweep(tmp_path / str(len(list(tmp_path.iterdir()))), [
            fake_result("learning_rate", {"optimizer.lr": lr}, seed)
            for lr, seeds in seeds_by_lr.items() for seed in seeds])
        return band_text(group_sweeps(load_runs(folder))[0])

    assert band({0.01: (0,), 0.1: (0,)}) == "one seed"
    assert band({0.01: (0, 1, 2), 0.1: (0, 1, 2)}) == "mean ± std over 3 seeds"
    assert band({0.01: (0, 1), 0.1: (0,)}) == "mean ± std over 1-2 seeds"  # a study under way




def test_a_reader_that_leaves_early_gets_no_traceback(lr_sweep: Path):
    """`report DIR | head`: `true` leaves before the report prints a line."""
    command = f"{sys.executable} -m fmnist_lab.report {lr_sweep} | true; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=PATIENCE)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert (lr_sweep / "report.md").is_file()


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_bad_dir_exits_2_with_one_line(tmp_path: Path, make):
    proc = run_cli("fmnist_lab.report", str(make(tmp_path)))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr














def test_a_sweep_with_one_run_finished_so_far_is_named_by_its_grid(tmp_path: Path):
    """A study in progress: one value of a grid has finished. Its multirun.yaml says what
    the sweep varies, so the report gives that value its row, not "single configuration"."""
    sweep = write_sweep(tmp_path / "weight_init", [
        fake_result("weight_init", {"init": "xavier_uniform"}, val_acc=0.918)])
    md = write_report(tmp_path).markdown.read_text()
    assert "## weight_init: single configuration" in md  # without the sweep's record
    OmegaConf.save({"hydra": {"sweeper": {"params": {"init": "xavier_uniform,kaiming_normal"}},
                              "overrides": {"task": ["experiment=weight_init", "seed=0"]}}},
                   sweep / "multirun.yaml")
    md = write_report(tmp_path).markdown.read_text()
    rows = table(md, "weight_init: init")
    assert list(rows)[1:] == ["xavier_uniform"]
    assert "**Best by mean last-epoch validation accuracy:** init = `xavier_uniform`" in md








def test_the_report_imports_neither_torch_nor_lightning_where_they_are_installed(lr_sweep: Path):
    # Reading a sweep's multirun.yaml once went through fmnist_lab.sweep -> schema -> data:
    # seven seconds of torch and Lightning before the first run was read.
    code = ("import runpy, sys; sys.argv = ['report', sys.argv[1]]\n"
            "try:\n    runpy.run_module('fmnist_lab.report', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'pytorch_lightning', 'lightning', 'torchvision'}))")
    recorded = ROOT / "results/study/learning_rate/seed_0/multirun.yaml"
    (lr_sweep / "multirun.yaml").write_text(recorded.read_text())  # Hydra's, as a sweep leaves
    proc = subprocess.run([sys.executable, "-c", code, str(lr_sweep)], cwd=ROOT,
                          capture_output=True, text=True, timeout=PATIENCE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
