"""`python -m fmnist_lab.report DIR --readme FILE`: the record's tables in the docs, regenerated
from the runs (the seed's numbers beside ours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fmnist_lab.report.docs import update_readme_tables
from fmnist_lab.report.runs import group_sweeps, load_runs
from tests.conftest import run_cli, table
from tests.fakes import cv_sweep

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
