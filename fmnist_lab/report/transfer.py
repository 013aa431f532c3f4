"""The transfer regret of a setting's best value, bootstrapped, and the verdict rule: what
experiment=tasks asks of each task and setting (fmnist_lab.report.tasks lays it out).

A task's runs keep per-image predictions (predictions.npz), so every value's accuracy is
resampled on the same images: the differences are paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fmnist_lab.report.runs import Run, value_key
from fmnist_lab.report.stats import holm, mean_std
from fmnist_lab.report.task_runs import TaskSetting

# Fixed before any task run was looked at: the smallest difference of two 3-seed means that a
# two-sided 5 % test detects with 80 % power, at results/study's pooled seed-to-seed std of
# test accuracy (0.41 points over its 18 two_conv_one_fc configurations at seeds 0-2):
# (1.96 + 0.84) x 0.41 x sqrt(2/3) = 0.95 points, rounded up; above the 0.5 floor.
DELTA = 0.010
ALPHA = 0.05
RESAMPLES = 4000
BOOTSTRAP_SEED = 0
RULE = (
    f"**The rule** (fixed before the runs were looked at). A setting's *transfer regret* on a "
    "task is the test accuracy of the task's own best value (by mean validation accuracy) "
    "minus that of fmnist_55k's best value used on the task, mean over seeds. Its "
    f"distribution comes from {RESAMPLES:,} bootstrap resamples of the task's seeds and of "
    "its validation and test images (every value is evaluated on the same images, so each "
    "resample pairs them), and of fmnist_55k's seeds; the task's best value and fmnist_55k's "
    "are picked anew inside every resample, so a lucky winner does not make a regret. "
    f"Margin δ = {DELTA * 100:.1f} points: the smallest difference of two 3-seed means a "
    "two-sided 5 % test detects with 80 % power at results/study's pooled seed-to-seed std "
    "(0.41 points; 2.80 × 0.41 × √(2/3) = 0.95, rounded up). The verdict is **moves** when "
    f"regret > δ with Holm-adjusted one-sided p < {ALPHA} (its lower confidence bound lies "
    "above δ), **stays** when regret < δ the same way (its upper bound lies below δ), "
    "**inconclusive** otherwise; Holm's correction runs over all task × setting verdicts "
    "(the control's four apart). A value that diverged at any seed is not a candidate for "
    "best; carried to a task where it diverges, it scores chance there.")


@dataclass
class Regret:
    """fmnist_55k's best value carried to a task: the point estimate, its spread over seeds,
    its bootstrap distribution and the verdict's p-values."""

    task: str
    key: str
    own_best: Any
    reference_best: Any
    mean: float
    std: float | None
    draws: np.ndarray
    p_moves: float
    p_stays: float
    verdict: str = "inconclusive"

    def bounds(self, level: float = 0.95) -> tuple[float, float]:
        tail = (1 - level) / 2
        return float(np.quantile(self.draws, tail)), float(np.quantile(self.draws, 1 - tail))

    def text(self) -> str:
        """"+2.62 ± 0.40 [+1.91, +3.30] **moves**": points, its spread over seeds, the 95 %
        interval and the verdict, as the regret tables show it."""
        lo, hi = self.bounds()
        spread = "" if self.std is None else f" ± {self.std * 100:.2f}"
        return (f"{self.mean * 100:+.2f}{spread} [{lo * 100:+.2f}, {hi * 100:+.2f}] "
                f"**{self.verdict}**")


def _correct(run: Run) -> dict[str, np.ndarray] | None:
    """Per-image correctness of a run's last validation and its test pass, where it kept
    its predictions (predictions.npz); None otherwise (results/study's runs)."""
    name = run.result.get("predictions")
    if not name:
        return None
    with np.load(run.path / name) as saved:
        return {split: saved[f"{split}_predicted"] == saved[f"{split}_label"]
                for split in ("val", "test")}


def accuracy_table(setting: TaskSetting, split: str, chance: float
                    ) -> tuple[np.ndarray, list[int]] | None:
    """(values x seeds x images) correctness of `split`, and the candidate values' rows; a
    run that diverged scores chance on every image (as a fraction: its expected accuracy)."""
    seeds = setting.seeds
    rows = []
    for cell in setting.cells:
        by_seed = {r.result.get("seed"): r for r in cell.runs}
        row = []
        for seed in seeds:
            run = by_seed.get(seed)
            if run is None:
                return None
            correct = _correct(run) if run.result.get("status") == "completed" else None
            if run.result.get("status") == "completed" and correct is None:
                return None  # no predictions kept: this task cannot be resampled by image
            row.append(correct[split].astype(float) if correct is not None else None)
        rows.append(row)
    size = next(len(a) for row in rows for a in row if a is not None)
    table = np.array([[a if a is not None else np.full(size, chance) for a in row]
                      for row in rows])
    return table, [i for i, c in enumerate(setting.cells) if c.candidate]


def _seed_accuracies(setting: TaskSetting, key: str, chance: float) -> np.ndarray:
    """(values x seeds) of `key` (val_acc, test_acc) from results.json; chance where a run
    did not complete."""
    seeds = setting.seeds
    table = np.full((len(setting.cells), len(seeds)), chance)
    for i, cell in enumerate(setting.cells):
        for run in cell.runs:
            if run.result.get("status") == "completed" and run.result.get("seed") in seeds:
                value = run.epoch_metric("val_acc", True) if key == "val_acc" else \
                    run.result.get(key)
                table[i, seeds.index(run.result.get("seed"))] = value
    return table


def transfer_regret(setting: TaskSetting, reference: TaskSetting,
                    rng: np.random.Generator) -> Regret | None:
    """The regret of carrying `reference`'s best value to `setting`'s task, bootstrapped:
    the task's seeds and images resampled (its values paired on the same images), the
    reference's seeds resampled, both best values picked again in every resample."""
    chance = 1 / max(2, setting.cells[0].runs[0].result.get("num_classes") or 10)
    ref_val = _seed_accuracies(reference, "val_acc", 0.0)
    ref_ok = [i for i, c in enumerate(reference.cells) if c.candidate]
    val = accuracy_table(setting, "val", chance)
    test = accuracy_table(setting, "test", chance)
    if val is None or test is None or not ref_ok:
        return None
    (val, candidates), (test, _) = val, test
    if not candidates:
        return None
    # Values of the task by the reference's values: the reference's pick, carried over.
    index = {value_key(c.value): i for i, c in enumerate(setting.cells)}
    carried = [index.get(value_key(c.value)) for c in reference.cells]
    if any(carried[i] is None for i in ref_ok):
        return None

    def regret(seeds: np.ndarray, val_w: np.ndarray, test_w: np.ndarray,
               ref_seeds: np.ndarray) -> float:
        val_acc = (val @ val_w)[:, seeds].mean(axis=1)  # (values x seeds) @ image weights
        own = candidates[int(np.argmax(val_acc[candidates]))]
        ref = ref_ok[int(np.argmax(ref_val[ref_ok][:, ref_seeds].mean(axis=1)))]
        test_acc = (test[[own, carried[ref]]] @ test_w)[:, seeds].mean(axis=1)
        return float(test_acc[0] - test_acc[1])

    n, m = val.shape[1], ref_val.shape[1]
    n_val, n_test = val.shape[2], test.shape[2]
    point = regret(np.arange(n), np.full(n_val, 1 / n_val), np.full(n_test, 1 / n_test),
                   np.arange(m))
    draws = np.empty(RESAMPLES)
    for b in range(RESAMPLES):
        seeds = rng.integers(0, n, n)
        val_w = np.bincount(rng.integers(0, n_val, n_val), minlength=n_val) / n_val
        test_w = np.bincount(rng.integers(0, n_test, n_test), minlength=n_test) / n_test
        draws[b] = regret(seeds, val_w, test_w, rng.integers(0, m, m))
    # Per seed: the two picks' test accuracies, the spread the tables show.
    own_cell = setting.best()
    ref_cell = reference.best()
    own_i, ref_i = index[value_key(own_cell.value)], carried[reference.cells.index(ref_cell)]
    per_seed = test.mean(axis=2)[own_i] - test.mean(axis=2)[ref_i]
    _, std, _ = mean_std(list(per_seed))
    return Regret(setting.task, setting.key, own_cell.value, ref_cell.value, point, std, draws,
                  p_moves=(np.sum(draws <= DELTA) + 1) / (RESAMPLES + 1),
                  p_stays=(np.sum(draws >= DELTA) + 1) / (RESAMPLES + 1))


def judge(regrets: list[Regret]) -> None:
    """Set each regret's verdict, Holm's correction over the family `regrets`."""
    moves = holm([r.p_moves for r in regrets])
    stays = holm([r.p_stays for r in regrets])
    for regret, p_move, p_stay in zip(regrets, moves, stays, strict=True):
        regret.verdict = ("moves" if p_move < ALPHA else "stays" if p_stay < ALPHA
                          else "inconclusive")
