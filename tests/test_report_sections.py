"""The report's sections beyond a sweep's table: the lr x batch-size interaction's heatmap and
scaling rule, and the study's wall time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fmnist_lab.report import write_report
from tests.conftest import table
from tests.fakes import fake_result, write_sweep


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
