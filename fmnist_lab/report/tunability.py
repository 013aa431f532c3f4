"""Tunability (Probst, Boulesteix & Bischl, JMLR 2019) from experiment=tasks' runs: how much
test accuracy a task gains by tuning a setting for itself instead of using one default shared
by all tasks. The transfer regret (report.transfer) carries fmnist_55k's best instead; both
answer "is this setting worth tuning per task?", from two sides.

The *shared default* of a setting is its value with the best mean validation accuracy over
the tasks (the mean over tasks of each task's mean over seeds), among the values that are
candidates on every task (every seed completed above chance): a default that diverges
somewhere is no default. The control (fmnist_1k at other seeds) is no task of its own here.

The bootstrap is transfer_regret's: each task's seeds, and its validation and test images
where its runs kept predictions.npz (its values paired on the same images), are resampled,
and every pick (each task's best, the shared default, fmnist_55k's best) is made again inside
each resample, so a lucky winner does not make a gain. A task whose runs kept no predictions
(fmnist_55k: results/study's runs) is resampled by seeds only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmnist_lab.report.runs import format_value, value_key
from fmnist_lab.report.tables import markdown_table
from fmnist_lab.report.task_runs import CONTROL, REFERENCE, SETTINGS, TaskSetting
from fmnist_lab.report.transfer import (
    BOOTSTRAP_SEED,
    DELTA,
    RESAMPLES,
    Regret,
    _seed_accuracies,
    accuracy_table,
)


@dataclass
class _Task:
    """One task's accuracies of one setting's values: (values x seeds x images) tables,
    one image column where its runs kept no predictions."""

    name: str
    values: dict[str, int]  # value_key -> row
    candidates: list[int]
    val: np.ndarray
    test: np.ndarray
    by_image: bool

    @property
    def keys(self) -> list[str]:
        """The value keys in the rows' order."""
        return list(self.values)

    def draw(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Mean over seeds of every value's validation and test accuracy: as recorded
        (`rng` None), or in one bootstrap resample of seeds and images."""
        n, n_val, n_test = self.val.shape[1], self.val.shape[2], self.test.shape[2]
        if rng is None:
            seeds = np.arange(n)
            val_w, test_w = np.full(n_val, 1 / n_val), np.full(n_test, 1 / n_test)
        else:
            seeds = rng.integers(0, n, n)
            val_w = np.bincount(rng.integers(0, n_val, n_val), minlength=n_val) / n_val
            test_w = np.bincount(rng.integers(0, n_test, n_test), minlength=n_test) / n_test
        return (self.val @ val_w)[:, seeds].mean(axis=1), (self.test @ test_w)[:, seeds].mean(
            axis=1)


def _task(setting: TaskSetting) -> _Task | None:
    """A task's tables, by image where every completed run kept its predictions, else by
    seed from results.json; None where a value lacks a seed the others have."""
    if not setting.cells or not setting.seeds:
        return None
    chance = 1 / max(2, setting.cells[0].runs[0].result.get("num_classes") or 10)
    val, test = accuracy_table(setting, "val", chance), accuracy_table(setting, "test", chance)
    by_image = val is not None and test is not None
    if by_image:
        (val, candidates), (test, _) = val, test
    else:
        if any(len({r.result.get("seed") for r in c.runs} & set(setting.seeds))
               < len(setting.seeds) for c in setting.cells):
            return None
        val = _seed_accuracies(setting, "val_acc", chance)[:, :, None]
        test = _seed_accuracies(setting, "test_acc", chance)[:, :, None]
        candidates = [i for i, c in enumerate(setting.cells) if c.candidate]
    return _Task(setting.task, {value_key(c.value): i for i, c in enumerate(setting.cells)},
                 candidates, val, test, by_image)


@dataclass
class _Picks:
    """One evaluation (as recorded, or one resample): each task's gain over the shared
    default, and on the non-reference tasks the regret of fmnist_55k's best and of a
    default picked without the task."""

    default: str | None
    own: dict[str, str]
    tunability: dict[str, float]
    reference_regret: dict[str, float] = field(default_factory=dict)
    held_out_regret: dict[str, float] = field(default_factory=dict)


def _evaluate(tasks: list[_Task], accuracies: list[tuple[np.ndarray, np.ndarray]],
              keys: list[str]) -> _Picks:
    """The picks and gains for one draw of every task's accuracies."""
    val = {t.name: a[0] for t, a in zip(tasks, accuracies, strict=True)}
    test = {t.name: a[1] for t, a in zip(tasks, accuracies, strict=True)}
    own = {t.name: t.candidates[int(np.argmax(val[t.name][t.candidates]))]
           for t in tasks if t.candidates}
    own_key = {t.name: t.keys[own[t.name]] for t in tasks if t.name in own}

    def default(among: list[_Task]) -> str | None:
        fit = [k for k in keys if all(k in t.values and t.values[k] in t.candidates
                                      for t in among)]
        if not fit or not among:
            return None
        scores = [sum(float(val[t.name][t.values[k]]) for t in among) for k in fit]
        return fit[int(np.argmax(scores))]

    def gain(task: _Task, value: str | None) -> float | None:
        if value is None or value not in task.values or task.name not in own:
            return None
        return float(test[task.name][own[task.name]] - test[task.name][task.values[value]])

    shared = default(tasks)
    picks = _Picks(shared, own_key, {})
    for task in tasks:
        found = gain(task, shared)
        if found is not None:
            picks.tunability[task.name] = found
        if task.name == REFERENCE:
            continue
        for into, value in ((picks.reference_regret, own_key.get(REFERENCE)),
                            (picks.held_out_regret, default([t for t in tasks if t is not task]))):
            found = gain(task, value)
            if found is not None:
                into[task.name] = found
    return picks


@dataclass
class Tunability:
    """One setting: the shared default, each task's gain over it, and the means over tasks
    with their bootstrap draws (mean tunability; the regrets of fmnist_55k's best and of a
    default picked without the task, mean over the non-reference tasks)."""

    key: str
    default: Any
    own_best: dict[str, Any]
    per_task: dict[str, float]
    draws: dict[str, np.ndarray]  # "tunability", "reference", "held_out", "advantage"
    seeds_only: list[str]
    reference: float | None = None
    held_out: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_task.values())))

    def bounds(self, name: str = "tunability", level: float = 0.95) -> tuple[float, float]:
        tail = (1 - level) / 2
        draws = self.draws[name]
        return float(np.nanquantile(draws, tail)), float(np.nanquantile(draws, 1 - tail))


def _mean(values: dict[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


def setting_tunability(settings: list[TaskSetting], rng: np.random.Generator
                       ) -> Tunability | None:
    """`settings`: one setting on every task (the control left out). None where a task's
    runs cannot be tabled or no value is a candidate on every task."""
    tasks = [_task(s) for s in settings]
    if len(tasks) < 2 or any(t is None for t in tasks):
        return None
    values = {value_key(c.value): c.value for s in settings for c in s.cells}
    keys = list(values)
    point = _evaluate(tasks, [t.draw(None) for t in tasks], keys)
    if point.default is None:
        return None
    names: dict[str, Callable[[_Picks], float]] = {
        "tunability": lambda p: _mean(p.tunability),
        "reference": lambda p: _mean(p.reference_regret),
        "held_out": lambda p: _mean(p.held_out_regret),
        "advantage": lambda p: _mean(p.reference_regret) - _mean(p.held_out_regret)}
    draws = {name: np.empty(RESAMPLES) for name in names}
    for b in range(RESAMPLES):
        picks = _evaluate(tasks, [t.draw(rng) for t in tasks], keys)
        for name, of in names.items():
            draws[name][b] = of(picks)
    return Tunability(settings[0].key, values[point.default],
                      {t: values[k] for t, k in point.own.items()}, point.tunability, draws,
                      [t.name for t in tasks if not t.by_image],
                      _mean(point.reference_regret) if point.reference_regret else None,
                      _mean(point.held_out_regret) if point.held_out_regret else None)


def all_tunability(grouped: dict[str, dict[str, TaskSetting]]) -> list[Tunability]:
    """Every setting's tunability over the tasks of `grouped` but the control; its own
    random stream, so the regrets' draws stay as they were."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    tasks = [t for t in grouped if t != CONTROL]
    found = [setting_tunability([grouped[t][key] for t in tasks], rng) for key in SETTINGS]
    return [t for t in found if t is not None]


# ---------------------------------------------------------------------------- the section


def definition(tunings: list[Tunability], tasks: list[str]) -> str:
    """The paragraph that says what the table measures, for the tasks it covers."""
    seeds_only = sorted({t for tuning in tunings for t in tuning.seeds_only})
    only = (f" ({', '.join(seeds_only)}: {'its' if len(seeds_only) == 1 else 'their'} runs "
            "kept no predictions, so seeds only)") if seeds_only else ""
    n = len(tasks)
    return (
        "A setting's *tunability* on a task (Probst, Boulesteix & Bischl, JMLR 2019) is the "
        "test accuracy of the task's own best value (by mean validation accuracy, as above) "
        "minus that of a *shared default* used on it, mean over seeds; the setting's "
        f"tunability is its mean over the {n} tasks (the control apart). The shared default "
        f"is the value with the best mean validation accuracy over the {n} tasks (each "
        "task's mean over seeds, averaged), among the values that completed above chance at "
        "every seed of every task. Intervals: 95 % percentile intervals of "
        f"{RESAMPLES:,} bootstrap resamples of each task's seeds and of its validation and "
        f"test images{only}, every best value and the shared default picked anew inside "
        "each resample. The transfer regret carries fmnist_55k's best instead. The shared "
        "default has seen every task's validation images where fmnist_55k's best has seen "
        "only fmnist_55k's, so the last column picks a default without the task it is used "
        f"on (over the other {n - 1}; carried to a task where it diverged, it scores chance "
        "there): the fair comparison with fmnist_55k's best.")


def _pts(x: float | None) -> str:
    """Points, signed; "—" for none."""
    return "—" if x is None or np.isnan(x) else f"{x * 100:+.2f}"


def _interval(t: Tunability, name: str) -> str:
    lo, hi = t.bounds(name)
    return f"[{_pts(lo)}, {_pts(hi)}]"


def _mean_regret(regrets: list[Regret], key: str) -> float | None:
    """The transfer regret table's numbers for `key`, mean over its tasks."""
    mine = [r.mean for r in regrets if r.key == key]
    return float(np.mean(mine)) if mine else None


def tunability_table(tunings: list[Tunability], regrets: list[Regret], tasks: list[str]
                     ) -> str:
    """Settings down: the shared default, each task's tunability (points), the mean with its
    interval, and beside it the mean regret of fmnist_55k's best and of a default picked
    without the task, over the non-reference tasks."""
    rows = []
    for t in tunings:
        regret = _mean_regret(regrets, t.key)
        rows.append([SETTINGS[t.key], f"`{format_value(t.default)}`",
                     *(_pts(t.per_task.get(task)) for task in tasks),
                     f"**{_pts(t.mean)}** {_interval(t, 'tunability')}",
                     _pts(regret),
                     f"{_pts(t.held_out)} {_interval(t, 'held_out')}"])
    others = len([t for t in tasks if t != REFERENCE])
    return markdown_table(["setting", "shared default", *tasks, "mean tunability [95 %]",
                           f"transfer regret of fmnist_55k's best, mean over {others} tasks",
                           "regret of a default picked without the task, mean over "
                           f"{others} tasks [95 %]"], rows)


def tunability_lines(tunings: list[Tunability]) -> list[str]:
    """Which settings are worth tuning per task (mean tunability against δ), and whether a
    default picked over the other tasks transfers better than fmnist_55k's best."""
    if not tunings:
        return []
    worth: dict[str, list[str]] = {"worth tuning per task": [], "not worth it": [],
                                   "undecided": []}
    for t in tunings:
        lo, hi = t.bounds()
        verdict = ("worth tuning per task" if lo > DELTA else
                   "not worth it" if hi < DELTA else "undecided")
        worth[verdict].append(f"{SETTINGS[t.key]} ({_pts(t.mean)} {_interval(t, 'tunability')})")
    lines = ["- **Worth tuning per task?** Mean tunability against δ = "
             f"{DELTA * 100:.1f} points (the whole 95 % interval above δ: worth tuning; "
             "below it: not worth it, the shared default gives up less than δ; else "
             "undecided; intervals not corrected for the four settings): "
             + "; ".join(f"{v}: {', '.join(ts)}" for v, ts in worth.items() if ts) + "."]
    parts = []
    for t in tunings:
        if t.held_out is None or t.reference is None:
            continue
        lo, hi = t.bounds("advantage")
        said = ("the held-out default loses less" if lo > 0 else
                "fmnist_55k's best loses less" if hi < 0 else "no clear difference")
        parts.append(f"{SETTINGS[t.key]} {_pts(t.held_out)} against {_pts(t.reference)}, "
                     f"difference {_pts(t.reference - t.held_out)} "
                     f"{_interval(t, 'advantage')}: {said}")
    if parts:
        lines.append(
            "- **Does a default picked over many tasks transfer better than fmnist_55k's "
            "best?** Mean regret over the non-reference tasks of a default picked without the "
            "task against that of fmnist_55k's best, in points, and the difference "
            "(fmnist_55k's minus the held-out default's, 95 % interval): "
            + "; ".join(parts) + ".")
    return lines


def tunability_summary(tunings: list[Tunability], regrets: list[Regret]) -> str:
    """The front page's table: per setting the shared default, its mean tunability, and the
    regret of fmnist_55k's best beside that of a default picked without the task."""
    rows = [[SETTINGS[t.key], f"`{format_value(t.default)}`",
             f"{_pts(t.mean)} {_interval(t, 'tunability')}",
             _pts(_mean_regret(regrets, t.key)),
             f"{_pts(t.held_out)} {_interval(t, 'held_out')}"] for t in tunings]
    return markdown_table(["setting", "shared default", "mean tunability [95 %]",
                           "regret: fmnist_55k's best", "regret: a default picked without "
                           "the task [95 %]"], rows)
