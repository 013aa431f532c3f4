"""`python -m fmnist_lab.report`: tables, CSV and figures from fabricated and real sweeps."""

from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fmnist_lab.report import write_report
from fmnist_lab.report.docs import update_readme_tables
from fmnist_lab.report.figures import band_text, use_log_scale
from fmnist_lab.report.runs import group_sweeps, load_runs
from fmnist_lab.report.stats import spearman
from tests.conftest import PATIENCE, PNG_SIGNATURE, ROOT, column, run_cli, table

# What train.py resolves, cut to the keys the report reads.
BASE_CONFIG: dict[str, Any] = {
    "name": "train", "seed": 0, "num_threads": None,
    "optimizer": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    "data": {"root": None, "batch_size": 128, "train_size": None, "num_folds": None,
             "fold": None, "split_seed": 0},
    "model": {"_target_": "fmnist_lab.models.TwoConvOneFC"},
    "init": {"scheme": "default"},
    "transforms": {"_target_": "torch.nn.Identity"},
    "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False},
}
MODELS = {"two_conv_one_fc": ("TwoConvOneFC", 1_625_866), "three_fc": ("ThreeFC", 94_154)}
TRANSFORMS = {"hflip": {"_target_": "fmnist_lab.transforms.RandomHorizontalFlip", "p": 0.5},
              "rotation": {"_target_": "fmnist_lab.transforms.RandomRotation", "degrees": 10}}


def fake_result(experiment: str, swept: dict[str, Any], seed: int = 0, *,
                status: str = "completed", val_acc: float = 0.9, test_acc: float = 0.88,
                train_losses: tuple[float, ...] = (1.0, 0.5, 0.3),
                diverged_epoch: int | None = None) -> dict[str, Any]:
    """A results.json as train.py writes it, for `swept` values (dotted keys or groups)."""
    config = copy.deepcopy(BASE_CONFIG)
    config["name"], config["seed"] = experiment, seed
    model = "two_conv_one_fc"
    choices = {"data": "fashion_mnist", "model": model, "init": "default",
               "transforms": "standard", "trainer": "default", "experiment": experiment}
    for key, value in swept.items():
        if key in choices:
            choices[key] = value
        if key == "model":
            model = value
            config["model"] = {"_target_": f"fmnist_lab.models.{MODELS[value][0]}"}
        elif key == "init":
            config["init"] = {"scheme": value}
        elif key == "transforms":
            config["transforms"] = TRANSFORMS[value]
        else:
            section, name = key.split(".")
            config[section][name] = value
    overrides = [f"{k}={v}" for k, v in swept.items()]
    overrides += [f"experiment={experiment}", f"seed={seed}"]
    if status == "failed":
        return {"status": "failed", "error": "RuntimeError: boom", "seed": seed,
                "overrides": overrides, "choices": choices, "config": config}
    epochs = len(train_losses)
    history = [{"epoch": e + 1, "train_loss": loss, "train_acc": 0.5, "val_loss": loss + 0.1,
                "val_acc": val_acc - 0.05 * (epochs - 1 - e), "seconds": 2.0}
               for e, loss in enumerate(train_losses)]
    if status == "diverged":
        history = history[:diverged_epoch]
        history[-1].update(train_loss=math.nan, val_loss=math.nan, val_acc=0.1)
    return {"status": status, "model": model, "num_params": MODELS[model][1], "seed": seed,
            "overrides": overrides, "choices": choices, "diverged_epoch": diverged_epoch,
            "history": history,
            "test_loss": None if status == "diverged" else 0.3,
            "test_acc": None if status == "diverged" else test_acc, "device": "cpu",
            "train_images_per_second": 1000.0, "train_images": 550, "val_images": 50,
            "test_images": 1000, "config": config}


def write_sweep(folder: Path, results: list[dict[str, Any]]) -> Path:
    """Hydra's layout: FOLDER/<job num>_<overrides>/results.json."""
    for num, result in enumerate(results):
        run = folder / f"{num}_{','.join(result['overrides'][:1])}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(result))
    return folder


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    """Two seeds of lr 0.001, 0.01, 0.1; lr 1 diverges in epoch 2 for both."""
    accs = {0.001: (0.80, 0.82), 0.01: (0.90, 0.92), 0.1: (0.85, 0.85)}
    results = [fake_result("learning_rate", {"optimizer.lr": lr}, seed, val_acc=acc[seed],
                           test_acc=acc[seed] - 0.01, train_losses=(1.0 + seed, 0.5, 0.2 + seed))
               for lr, acc in accs.items() for seed in (0, 1)]
    results += [fake_result("learning_rate", {"optimizer.lr": 1}, seed, status="diverged",
                            diverged_epoch=2) for seed in (0, 1)]
    return write_sweep(tmp_path / "lr", results)


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


def cv_sweep(folder: Path, accs: list[float], seeds: tuple[int, ...] = (0, 1)) -> Path:
    return write_sweep(folder, [
        fake_result("cross_validation", {"data.fold": fold, "data.num_folds": 5}, seed,
                    val_acc=acc + 0.01 * seed)
        for fold, acc in enumerate(accs) for seed in seeds])


def test_cross_validation_table_has_fold_rows_and_a_mean_row(tmp_path: Path):
    md = write_report(cv_sweep(tmp_path, [0.86, 0.88, 0.85, 0.87, 0.86])).markdown.read_text()
    rows = table(md, "cross_validation: data.fold")
    assert list(rows)[1:] == ["0", "1", "2", "3", "4", "**mean ± std**"]
    assert column(rows, "0", "fold acc % ep 3") == "86.50 ± 0.71"  # over two seeds
    # Over the five folds' means 86.5, 88.5, 85.5, 87.5, 86.5.
    assert column(rows, "**mean ± std**", "fold acc % ep 3") == "86.90 ± 1.14"
    assert "spread 3.00 points" in md and "no climb with fold order" in md


def test_the_readmes_fold_table_ends_with_the_mean_over_folds(tmp_path: Path):
    sweeps = group_sweeps(load_runs(cv_sweep(tmp_path, [0.86, 0.88, 0.85, 0.87, 0.86])))
    text = update_readme_tables("(record: `cross_validation`)\n\n| fold |\n|---|\n", sweeps)
    rows = table("## cv\n" + text, "cv")
    assert rows["header"][4:7] == ["fold acc: seed's", "ours", "test acc: ours"]
    assert rows["2"][4:6] == ["96.12 %", "85.50 ± 0.71 %"]  # the seed's fold 3 (its numbering)
    # The seed's five folds average 95.57 %; ours are the report's mean row.
    assert rows["**mean ± std**"][1:] == [
        "5 folds", "0.1867 → 0.0787", "1.0000 ± 0.0000 → 0.3000 ± 0.0000", "95.57 %",
        "86.90 ± 1.14 %", "88.00 ± 0.00 %", "over folds"]


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


def test_the_readmes_figure_12_is_the_compare_summary_beside_the_seeds():
    def layer(network: str, name: str, units: int, mean: float) -> dict[str, Any]:
        return {"network": network, "model": "resnet18" if network == "reference" else
                "three_fc", "layer": name, "description": name, "units": units,
                "dead_units": 1, "shape": [units - 1, units - 1], "mean": mean, "std": 0.5,
                "offdiag_mean": -0.1}

    summary = {"layers": {"reference.features": layer("reference", "features", 512, 0.03),
                          "candidate.features": layer("candidate", "features", 256, 0.02),
                          "candidate.logits": layer("candidate", "logits", 10, 0.01)}}
    text = update_readme_tables("(record: `compare`)\n\n| layer |\n|---|\n", [], summary)
    rows = table("## f12\n" + text, "f12")
    assert rows["resnet18 (reference), features"][1:] == [
        "(512, 512)", "(511, 511)", "0.0221", "0.0300", "0.1641", "0.5000", "-0.1000",
        "1 of 512"]
    assert rows["three_fc (candidate), logits"][1:4] == ["(10, 10)", "(9, 9)", "0.1635"]
    assert rows["three_fc (candidate), features"][1] == "—"  # the seed has no such matrix
    # Without a compare.json the table is left as it is.
    assert update_readme_tables(text, [], None) == text


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


README_BEFORE = """# A project

Intro. | not a table row, a sentence that starts mid-line.

**Learning rate** (record: `learning_rate`; a note on the same line).

| optimizer.lr | n | whatever was here before |
|---|---|---|
| 0.5 | 9 | stale |

Text between tables stays.

| a table under no record line | x |
|---|---|
| kept | as is |

**Initialisation** (record: `weight_init`): nothing of it recorded yet.

| init | old |
|---|---|

## Other

(record: `not_an_experiment`)

| left | alone |
|---|---|
"""


def test_readme_tables_are_regenerated_from_the_record(tmp_path: Path, lr_sweep: Path):
    readme = tmp_path / "README.md"
    readme.write_text(README_BEFORE)
    proc = run_cli("fmnist_lab.report", str(lr_sweep), "--readme", str(readme))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = readme.read_text()
    lr = table(text.replace("**Learning rate**", "## lr"), "lr")
    assert lr["header"] == ["optimizer.lr", "n", "train loss ep 1 → ep 3: seed's", "ours",
                            "test acc: seed's", "ours", "status"]
    # Mean ± std over the two seeds, the seed's own numbers beside them.
    assert lr["0.01"] == ["0.01", "2", "0.4471 → 0.0484", "1.5000 ± 0.7071 → 0.7000 ± 0.7071",
                          "91.61 %", "90.00 ± 1.41 %", "2 completed"]
    assert lr["1"] == ["1", "0", "—", "—", "—", "—", "2 diverged (epoch 2)"]
    assert lr["0.0001"][1:] == ["0", "0.6427 → 0.3072", "—", "87.98 %", "—", "not run yet"]
    assert "0.5" not in lr and "stale" not in text
    init = table(text.replace("**Initialisation**", "## init"), "init")
    assert init["header"][0] == "init" and len(init) == 1 + 4  # the seed's four schemes
    assert all(row[-1] == "not run yet" for label, row in init.items() if label != "header")
    # Everything that is not a record's table is as it was.
    for kept in ("Intro. | not a table row", "Text between tables stays.",
                 "| kept | as is |", "| left | alone |"):
        assert kept in text
    # Regenerating again changes nothing.
    run_cli("fmnist_lab.report", str(lr_sweep), "--readme", str(readme))
    assert readme.read_text() == text


@pytest.mark.parametrize("content", [None, "no record line here\n"])
def test_a_readme_without_record_tables_exits_2(tmp_path: Path, lr_sweep: Path, content):
    readme = tmp_path / "README.md"
    if content is not None:
        readme.write_text(content)
    proc = run_cli("fmnist_lab.report", str(lr_sweep), "--readme", str(readme))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --readme ") and "Traceback" not in proc.stderr
    assert content is None or readme.read_text() == content


# experiment=interaction: lr x batch size.
def interaction_results(best_lr: dict[int, float]) -> list[dict]:
    """5 x 4 grid, 2 seeds; at each batch size `best_lr[size]` scores highest; lr 1 diverges."""
    results = []
    for size in (64, 128, 256, 512):
        for lr in (0.0001, 0.001, 0.01, 0.1, 1.0):
            for seed in (0, 1):
                if lr == 1.0:
                    results.append(fake_result("interaction", {"optimizer.lr": lr,
                                   "data.batch_size": size}, seed, status="diverged",
                                   diverged_epoch=1))
                    continue
                acc = 0.9 - 0.02 * abs(math.log10(lr / best_lr[size])) + size / 1e5
                results.append(fake_result("interaction", {"optimizer.lr": lr,
                               "data.batch_size": size}, seed, val_acc=acc + seed * 1e-4))
    return results


def test_interaction_heatmap_marks_the_best_cell_and_reads_the_scaling_rule(tmp_path):
    rising = {64: 0.001, 128: 0.01, 256: 0.01, 512: 0.1}
    report = write_report(write_sweep(tmp_path / "up", interaction_results(rising)))
    md = report.markdown.read_text()
    heatmap = tmp_path / "up" / "interaction_heatmap.png"
    assert heatmap in report.figures and heatmap.stat().st_size > 10_000
    assert "![interaction: validation accuracy by learning rate and batch size]" in md
    assert ("**Best learning rate per batch size:** 64 → 0.001, 128 → 0.01, 256 → 0.01, "
            "512 → 0.1; it rises with the batch size") in md
    assert "data.batch_size, optimizer.lr = `512, 0.1`" in md or "`0.1, 512`" in md

    flat = {64: 0.01, 128: 0.01, 256: 0.01, 512: 0.01}
    md = write_report(write_sweep(tmp_path / "flat", interaction_results(flat))).markdown
    assert "it does not move with the batch size" in md.read_text()
    falling = {64: 0.1, 128: 0.01, 256: 0.01, 512: 0.001}
    md = write_report(write_sweep(tmp_path / "down", interaction_results(falling))).markdown
    assert "does not rise monotonically" in md.read_text()


def test_a_one_factor_sweep_gets_no_heatmap(tmp_path):
    results = [fake_result("learning_rate", {"optimizer.lr": lr}) for lr in (0.01, 0.1)]
    report = write_report(write_sweep(tmp_path, results))
    assert not list(tmp_path.glob("*_heatmap.png"))
    assert "Best learning rate per batch size" not in report.markdown.read_text()


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


def clocked(result: dict[str, Any], ends: list[str], seconds: float,
            machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """`result` with its epochs ending at `ends` (ISO, UTC), each `seconds` long."""
    for entry, ended in zip(result["history"], ends, strict=True):
        entry.update(ended=ended, seconds=seconds)
    result["machine"] = machine or {"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 1}
    return result


def test_the_study_wall_time_is_the_union_of_its_epochs_seed_by_seed(tmp_path: Path):
    lr = [fake_result("learning_rate", {"optimizer.lr": v}, seed) for v in (0.01, 0.1)
          for seed in (1, 2)]
    # Seed 1: two runs side by side, 10:00-10:30 and 10:10-10:40, count once: 40 min.
    clocked(lr[0], ["2026-11-28T10:10:00+00:00", "2026-11-28T10:20:00+00:00",
                    "2026-11-28T10:30:00+00:00"], 600)
    clocked(lr[2], ["2026-11-28T10:20:00+00:00", "2026-11-28T10:30:00+00:00",
                    "2026-11-28T10:40:00+00:00"], 600)
    # Seed 2: one run, then a day's gap (the sitting ended), then another: 2 x 3 min.
    clocked(lr[1], ["2026-11-28T11:01:00+00:00", "2026-11-28T11:02:00+00:00",
                    "2026-11-28T11:03:00+00:00"], 60)
    clocked(lr[3], ["2026-11-29T09:01:00+00:00", "2026-11-29T09:02:00+00:00",
                    "2026-11-29T09:03:00+00:00"], 60, {"gpu": "NVIDIA H100"})
    old = fake_result("architecture", {"model": "three_fc"}, 1)  # recorded before clocks
    write_sweep(tmp_path / "learning_rate", lr)
    write_sweep(tmp_path / "architecture", [old])
    md = write_report(tmp_path).markdown.read_text()
    rows = table(md, "Time")
    assert rows["header"] == ["seed", "runs", "wall time", "run time"]
    assert rows["1"] == ["1", "2", "40 min", "1 h 00 min"]
    assert rows["2"] == ["2", "2", "6 min", "6 min"]
    assert rows["**all**"] == ["**all**", "4", "46 min", "1 h 06 min"]
    assert "AMD EPYC (2 cores), 1 torch thread(s) a run: 3 run(s); NVIDIA H100: 1 run(s)" in md
    assert "1 trained run(s) recorded before epochs carried their clock are left out" in md


def test_a_record_without_clocks_has_no_time_section(tmp_path: Path):
    write_sweep(tmp_path, [fake_result("learning_rate", {"optimizer.lr": v}) for v in (0.01, 0.1)])
    assert "## Time" not in write_report(tmp_path).markdown.read_text()


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
