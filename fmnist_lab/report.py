"""`python -m fmnist_lab.report DIR [--log-y] [--readme FILE]`: the study's tables and figures
from its runs.

Reads every `results.json` below DIR (one sweep, or a whole `make study` folder) and writes
into DIR:

- `report.md`: per experiment, one table in the layout of the seed's Figures 6-10 (one row per
  swept value, epoch-1 and last-epoch metrics as mean ± std over seeds) or, for
  cross-validation, of its Figure 11 (one row per fold, a mean row and the spread);
- `results.csv`: one row per run with every config value and metric;
- `<experiment>_loss.png`: training and validation loss against epoch, one line per value
  (the seed's Figures 1-5), mean over seeds with a ±std band;
- with `--readme FILE`, the seed-beside-ours table under each "(record: `NAME`" line of FILE
  (the README's Results; `compare` is Figure 12, from compare.json), so no number there is
  copied by hand.

Runs are grouped by experiment (`config.name`); the swept parameters are the config values
that differ between the runs of one experiment, seeds aside. The model, init and transforms
groups are named by their choice (`three_fc`, `kaiming_normal`, `hflip`), not their class.
It needs only numpy and matplotlib, so it starts fast and runs where torch does not.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.keys import BOOKKEEPING, IMPLIED, IMPLIED_CHOICES, LAUNCH_GROUPS
from fmnist_lab.results import (
    RESULTS_FILE,
    find_results,
    flatten,
    write_text_atomic,
)

COMPARE_FILE = "compare.md"
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a sweep: its grid and command line
# Shown under a table's heading when the same for all its runs: what the table held fixed.
HELD_FIXED = ("model", "init", "transforms", "optimizer.lr", "optimizer.momentum",
              "data.batch_size", "data.train_size", "trainer.max_epochs")
# The seed study's order; any other experiment follows, by name.
STUDY_ORDER = ("architecture", "learning_rate", "batch_size", "weight_init", "augmentation",
               "cross_validation")
FOLD_KEY = "data.fold"
# Spearman ρ at or above this over ≥ 4 folds is a climb (5 folds: p ≈ 0.04, one-sided).
CLIMB_RHO = 0.9
# A network that predicts one class scores 10 % on the stratified splits: a run whose
# validation accuracy ends at or below this learned nothing, NaN or not.
CHANCE_ACC = 0.11
# The seed study's published numbers, shown beside ours where an experiment has them.
SEED_NUMBERS = json.loads((Path(__file__).parent / "seed_study.json").read_text())


class ReportError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run folder's `results.json`, with its config flattened to dotted keys."""

    path: Path
    result: dict[str, Any]
    params: dict[str, Any]

    @property
    def status(self) -> str:
        """As recorded, except that a completed run that ended at chance is "collapsed"."""
        status = str(self.result.get("status", "unknown"))
        return "collapsed" if status == "completed" and self.collapsed_epoch else status

    @property
    def collapsed_epoch(self) -> int | None:
        """The epoch from which validation accuracy stayed at chance to the end, where that
        is two epochs or more (after one epoch a slow start looks the same)."""
        streak: list[int] = []
        for entry in self.history:
            acc = _finite(entry.get("val_acc"))
            streak = streak + [entry.get("epoch")] if acc is None or acc <= CHANCE_ACC else []
        return streak[0] if len(streak) >= 2 else None

    @property
    def experiment(self) -> str:
        return str((self.result.get("config") or {}).get("name", "unnamed"))

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.result.get("history") or []

    def epoch_metric(self, key: str, last: bool) -> float | None:
        """`key` (train_loss, val_loss, val_acc...) of the first or the last epoch."""
        if not self.history:
            return None
        return _finite(self.history[-1 if last else 0].get(key))

    @property
    def seconds(self) -> float | None:
        times = [e.get("seconds") for e in self.history]
        return float(sum(times)) if times and None not in times else None


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def run_params(result: dict[str, Any]) -> dict[str, Any]:
    """Flattened config with each config group named by the user's choice (`model`:
    `three_fc`), as train recorded it from Hydra."""
    params = flatten(result.get("config") or {})
    for group, choice in (result.get("choices") or {}).items():
        if group not in LAUNCH_GROUPS:
            params[group] = choice
    # A run recorded before a key or group existed did what its implied value does: the same
    # value, so a sweep continued by newer code is not split by keys its old runs lack.
    for key, value in {**IMPLIED, **IMPLIED_CHOICES}.items():
        params.setdefault(key, value)
    return params


def load_runs(root: Path) -> list[Run]:
    """Every readable `results.json` below `root`, in sweep-job order."""
    runs = [Run(path, result, run_params(result)) for path, result in find_results(root).items()
            # The networks fmnist_lab.compare trains for itself are not a sweep.
            if not str((result.get("config") or {}).get("name", "")).startswith("compare-")]
    return sorted(runs, key=_job_order)


def _job_order(run: Run) -> tuple[str, int, str]:
    # Hydra names sweep jobs `<num>_<overrides>`: order by num, not by text ("10" < "2").
    match = re.match(r"(\d+)_", run.path.name)
    return str(run.path.parent), int(match.group(1)) if match else -1, run.path.name


# --------------------------------------------------------------------------- sweeps


@dataclass
class Row:
    """The runs (seeds) of one swept value."""

    values: tuple[Any, ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(format_value(v) for v in self.values) or "(all runs)"

    @property
    def completed(self) -> list[Run]:
        """The runs that trained to the end: completed, or collapsed to chance."""
        return [r for r in self.runs if r.status in ("completed", "collapsed")]

    def stat(self, key: str, last: bool) -> tuple[float | None, float | None, int]:
        """Mean, std (None below 2 seeds) and n of a metric over the completed runs."""
        return mean_std([r.epoch_metric(key, last) for r in self.completed])

    def test_acc(self) -> tuple[float | None, float | None, int]:
        return mean_std([r.result.get("test_acc") for r in self.completed])

    @property
    def diverged(self) -> bool:
        return any(r.status == "diverged" for r in self.runs)

    @property
    def contender(self) -> bool:
        """Fit to be called best: no seed of it diverged or collapsed to chance."""
        return all(r.status == "completed" for r in self.runs)


@dataclass
class Sweep:
    """The runs of one experiment, one row per combination of its swept values."""

    name: str
    keys: list[str]
    rows: list[Row]

    @property
    def runs(self) -> list[Run]:
        return [r for row in self.rows for r in row.runs]

    @property
    def is_cross_validation(self) -> bool:
        return FOLD_KEY in self.keys


def mean_std(values: list[Any]) -> tuple[float | None, float | None, int]:
    finite = [v for v in (_finite(x) for x in values) if v is not None]
    if not finite:
        return None, None, 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return float(np.mean(finite)), std, len(finite)


def _key(value: Any) -> str:
    # Config values may be lists or dicts: compare them by their JSON text.
    return json.dumps(value, sort_keys=True, default=str)


def _declared_keys(sweep_dir: Path) -> frozenset[str]:
    """The keys the sweep in `sweep_dir` varies, from its multirun.yaml: none without one,
    or where Hydra is not installed (the report runs without it)."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        return frozenset()
    try:
        from omegaconf import OmegaConf

        from fmnist_lab.keys import swept_keys_declared
    except ImportError:
        return frozenset()
    try:
        return frozenset(swept_keys_declared(OmegaConf.load(path)))
    except Exception as e:  # damaged: the runs' own values decide, as without one
        print(f"warning: {path} is unreadable ({type(e).__name__}); its sweep's keys are "
              "taken from its runs", file=sys.stderr)
        return frozenset()


def swept_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between runs, seeds and bookkeeping aside.

    A group's own sub-keys (`transforms.degrees` of `transforms=rotation`) vary with the group
    choice; they are dropped when the choice alone determines them.
    """
    groups = {g for r in runs for g in r.result.get("choices") or {}}
    all_keys = sorted({k for r in runs for k in r.params} - BOOKKEEPING)
    # What the sweeps declare counts too: one of a grid's runs, finished before the others,
    # is that value's row, not a "single configuration".
    declared = set().union(*map(_declared_keys, {r.path.parent for r in runs}))
    varying = [k for k in all_keys
               if k in declared or len({_key(r.params.get(k)) for r in runs}) > 1]

    def determined_by_group(key: str) -> bool:
        group = key.split(".", 1)[0]
        if group not in groups or group not in varying or key == group:
            return False
        seen: dict[str, str] = {}
        return all(seen.setdefault(_key(r.params.get(group)), _key(r.params.get(key)))
                   == _key(r.params.get(key)) for r in runs)

    return [k for k in varying if not determined_by_group(k)]


def group_sweeps(runs: list[Run]) -> list[Sweep]:
    """Runs by experiment, then by their swept values; rows in grid order."""
    by_experiment: dict[str, list[Run]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    sweeps = []
    for name, exp_runs in by_experiment.items():
        keys = swept_keys(exp_runs)
        rows: dict[tuple[str, ...], Row] = {}
        for run in exp_runs:
            values = tuple(run.params.get(k) for k in keys)
            rows.setdefault(tuple(_key(v) for v in values), Row(values)).runs.append(run)
        for row in rows.values():
            row.runs = _each_run_once(row.runs)
        sweeps.append(Sweep(name, keys, _grid_order(list(rows.values()))))
    rank = {name: i for i, name in enumerate(STUDY_ORDER)}
    return sorted(sweeps, key=lambda s: (rank.get(s.name, len(rank)), s.name))


def _each_run_once(runs: list[Run]) -> list[Run]:
    """A run that reused one of the same row (a recipe's seed 0 found in its own search)
    counts once, as the run that trained it."""
    kept: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: bool(r.result.get("reused_from"))):  # stable
        kept.setdefault(run.result.get("run_key") or str(run.path), run)
    return list(kept.values())


def _grid_order(rows: list[Row]) -> list[Row]:
    """Numbers ascending (lr, batch size, fold); names in the order the sweep ran them."""
    columns = range(len(rows[0].values)) if rows else range(0)
    numeric = {i for i in columns if all(isinstance(r.values[i], int | float)
                                         and not isinstance(r.values[i], bool) for r in rows)}
    first_seen: dict[tuple[int, str], int] = {}
    for index, row in enumerate(rows):
        for i in columns:
            first_seen.setdefault((i, _key(row.values[i])), index)
    return sorted(rows, key=lambda r: tuple(
        r.values[i] if i in numeric else first_seen[i, _key(r.values[i])] for i in columns))


# --------------------------------------------------------------------------- tables


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def cell(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 4) -> str:
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def status_cell(row: Row) -> str:
    """"completed", "diverged (epoch 3)", "failed", or counts when seeds disagree."""
    counts = Counter(r.status for r in row.runs)
    parts = []
    for status, count in counts.items():
        text = status if len(row.runs) == 1 else f"{count} {status}"
        if status in ("diverged", "collapsed"):
            epochs = sorted({r.result.get("diverged_epoch") if status == "diverged"
                             else r.collapsed_epoch for r in row.runs if r.status == status}
                            - {None})
            if epochs:
                plural = "s" if len(epochs) > 1 else ""
                text += f" (epoch{plural} {', '.join(map(str, epochs))})"
        parts.append(text)
    return ", ".join(parts)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Column:
    """A metric column: `key` of the first or last epoch (or test_acc), how to print it."""

    header: str
    key: str
    last: bool
    scale: float = 1.0
    digits: int = 4

    def stat(self, row: Row) -> tuple[float | None, float | None, int]:
        return row.test_acc() if self.key == "test_acc" else row.stat(self.key, self.last)


def last_epoch_label(sweep: Sweep) -> str:
    """"ep 10" when the sweep's runs trained to the same epoch, else "last ep"."""
    lengths = {len(r.history) for r in sweep.runs if r.status in ("completed", "collapsed")}
    return f"ep {lengths.pop()}" if len(lengths) == 1 else "last ep"


def metric_columns(sweep: Sweep, acc_name: str = "val acc") -> list[Column]:
    """Epoch-1 and last-epoch train loss, val loss and accuracy, then test accuracy.

    One-epoch runs get one column per metric: epoch 1 is their last.
    """
    last = last_epoch_label(sweep)
    epochs = [(False, "ep 1"), (True, last)] if last != "ep 1" else [(True, "ep 1")]
    columns = [Column(f"{name} {when}", key, is_last, scale, digits)
               for name, key, scale, digits in (("train loss", "train_loss", 1, 4),
                                                ("val loss", "val_loss", 1, 4),
                                                (f"{acc_name} %", "val_acc", 100, 2))
               for is_last, when in epochs]
    return columns + [Column("test acc %", "test_acc", True, 100, 2)]


def _cells(stats: list[tuple[float | None, float | None, int]], columns: list[Column]) -> list[str]:
    return [cell(mean, std, c.scale, c.digits)
            for (mean, std, _), c in zip(stats, columns, strict=True)]


def seed_cell(sweep: Sweep, row: Row) -> str | None:
    """The seed study's own numbers for this row, None where it has none for the sweep."""
    numbers = SEED_NUMBERS.get(sweep.name) if len(sweep.keys) == 1 else None
    if numbers is None:
        return None
    seed = numbers.get(row.label)
    if seed is None:
        return "—"
    return f"{seed_loss_text(seed)}, {seed['acc']:.2f} %"


def seed_loss_text(seed: dict[str, float]) -> str:
    """The seed study's first → last epoch training loss of one of its rows."""
    return f"{seed['train_loss_first']:.4f} → {seed['train_loss_last']:.4f}"


SEED_HEADER = "seed study: train loss ep 1 → ep 10, acc"


def sweep_table(sweep: Sweep) -> str:
    """The seed's Figures 6-10, one row per swept value, mean ± std over seeds, and the
    seed's own numbers beside them where it has them."""
    columns = metric_columns(sweep)
    with_seed = bool(sweep.rows) and seed_cell(sweep, sweep.rows[0]) is not None
    header = [", ".join(sweep.keys) or "run", "n", "status", "params",
              *(c.header for c in columns), "seconds", *([SEED_HEADER] if with_seed else [])]
    rows = []
    for row in sweep.rows:
        params = next((r.result["num_params"] for r in row.runs if r.result.get("num_params")),
                      None)
        seconds, _, _ = mean_std([r.seconds for r in row.completed])
        rows.append([row.label, str(len(row.completed)), status_cell(row),
                     f"{params:,}" if params else "—",
                     *_cells([c.stat(row) for c in columns], columns),
                     "—" if seconds is None else f"{seconds:.1f}",
                     *([seed_cell(sweep, row)] if with_seed else [])])
    return _markdown_table(header, rows)


def ranked_rows(sweep: Sweep) -> list[tuple[Row, float, float | None, int]]:
    """Rows with a last-epoch validation accuracy, best first, with its mean, std and n.

    Validation, not test, accuracy: the test set stays out of choosing a value. A value that
    diverged or collapsed for any seed is no contender.
    """
    stats = [(row, *row.stat("val_acc", last=True)) for row in sweep.rows if row.contender]
    return sorted((s for s in stats if s[1] is not None), key=lambda s: -s[1])


def best_line(sweep: Sweep) -> str:
    """The best value, and whether its lead over the runner-up exceeds seed-to-seed noise."""
    ranked = ranked_rows(sweep)
    if not ranked:
        return "No value completed every seed above chance: no best value."
    name = ", ".join(sweep.keys)
    best, m1, s1, n1 = ranked[0]
    head = (f"**Best by mean last-epoch validation accuracy:** {name} = `{best.label}`, "
            f"{cell(m1, s1, 100, 2)} % (n={n1})")
    if len(ranked) == 1:
        return head + "; no other value completed to compare with."
    second, m2, s2, n2 = ranked[1]
    lead = (m1 - m2) * 100
    text = (f"{head}, ahead of `{second.label}` ({cell(m2, s2, 100, 2)} %, n={n2}) "
            f"by {lead:.2f} points")
    if s1 is None or s2 is None:
        return text + "; n=1: no noise estimate (run more seeds: `seed=0,1,2`)."
    # The std of the difference of two independent runs: the noise a lead must beat.
    noise = math.hypot(s1, s2) * 100
    verdict = "exceeds" if lead > noise else "does not exceed"
    return f"{text}; the lead {verdict} the seed-to-seed noise (combined std {noise:.2f} points)."


def _ranks(values: np.ndarray) -> np.ndarray:
    # Ties (equal accuracies on small folds are common) share their average rank.
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation; None when either side is constant."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if len(x) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def cross_validation_section(sweep: Sweep) -> str:
    """The seed's Figure 11: one row per fold, a mean ± std row, the spread, and no climb."""
    others = [i for i, k in enumerate(sweep.keys) if k != FOLD_KEY]
    fold_at = sweep.keys.index(FOLD_KEY)
    # Folds of other swept values (say two learning rates) get a table each.
    tables: dict[tuple[str, ...], list[Row]] = {}
    for row in sweep.rows:
        tables.setdefault(tuple(format_value(row.values[i]) for i in others), []).append(row)
    columns = metric_columns(sweep, acc_name="fold acc")
    parts = []
    for rest, rows in tables.items():
        if rest:
            parts.append(f"**{', '.join(sweep.keys[i] for i in others)} = {', '.join(rest)}**")
        with_seed = not rest and seed_cell(sweep, rows[0]) is not None
        header = ["fold", "n", "status", *(c.header for c in columns),
                  *([SEED_HEADER] if with_seed else [])]
        per_fold = [[c.stat(r) for c in columns] for r in rows]
        body = [[format_value(r.values[fold_at]), str(len(r.completed)), status_cell(r),
                 *_cells(stats, columns), *([seed_cell(sweep, r)] if with_seed else [])]
                for r, stats in zip(rows, per_fold, strict=True)]
        # The mean row is over folds: each fold counts once, whatever its number of seeds.
        summary = _cells([mean_std([fold[j][0] for fold in per_fold])
                          for j in range(len(columns))], columns)
        body.append(["**mean ± std**", str(len(rows)), "over folds", *summary,
                     *([""] if with_seed else [])])
        parts += [_markdown_table(header, body), "", spread_line(rows, fold_at)]
    return "\n".join(parts)


def spread_line(rows: list[Row], fold_at: int) -> str:
    """How far fold accuracies spread, and whether they climb with the fold index (leakage)."""
    folds, accs, seed_stds = [], [], []
    for row in rows:
        mean, std, _ = row.stat("val_acc", last=True)
        if mean is not None:
            folds.append(row.values[fold_at])
            accs.append(mean * 100)
        if std is not None:
            seed_stds.append(std * 100)
    if len(accs) < 2:
        return "Too few folds completed to state a spread."
    lo, hi = int(np.argmin(accs)), int(np.argmax(accs))
    text = (f"Fold accuracy (last-epoch accuracy on the held-out fold) ranges from "
            f"{accs[lo]:.2f} % (fold {folds[lo]}) to {accs[hi]:.2f} % (fold {folds[hi]}): "
            f"spread {accs[hi] - accs[lo]:.2f} points, std {np.std(accs, ddof=1):.2f} points "
            f"over {len(accs)} folds")
    # With several seeds, the noise a fold-to-fold difference should be measured against.
    if seed_stds:
        text += f" (seed-to-seed std within a fold: {np.mean(seed_stds):.2f} points)"
    text += ". "
    rho = spearman(folds, accs)
    if rho is None:
        return text + "All folds score the same: no climb with fold order."
    if len(accs) >= 4 and round(rho, 6) >= CLIMB_RHO:  # 0.9 computes as 0.8999…
        return text + (f"Accuracy climbs with the fold index (Spearman ρ = {rho:.2f}): later folds "
                       "may have trained on earlier folds' validation images; check for leakage.")
    return text + (f"Spearman correlation between fold index and accuracy ρ = {rho:.2f}: no climb "
                   "with fold order, as expected when every fold trains a fresh network (the "
                   "seed's folds climbed 91 % → 99 % because one network kept training).")


def held_fixed_line(sweep: Sweep) -> str:
    runs = sweep.runs
    fixed = [f"{k}={format_value(runs[0].params.get(k))}" for k in HELD_FIXED
             if k not in sweep.keys and len({_key(r.params.get(k)) for r in runs}) == 1]
    seeds = sorted({r.result.get("seed") for r in runs if r.result.get("seed") is not None})
    return (f"{len(runs)} runs; held fixed: {', '.join(fixed) or 'nothing'}; "
            f"seeds: {', '.join(map(str, seeds)) or 'unknown'}.")


def shared_lines(sweep: Sweep, root: Path, trained_in: dict[Path, str]) -> list[str]:
    """Rows whose runs were trained once for another experiment and reused here."""
    lines = []
    for row in sweep.rows:
        owners = [(r.path / r.result["reused_from"]).resolve() for r in row.runs
                  if r.result.get("reused_from")]
        if owners:
            experiments = sorted({trained_in.get(p, "?") for p in owners})
            lines.append(f"- `{row.label}` shares its {len(owners)} run(s) with "
                         f"{', '.join(f'`{e}`' for e in experiments)} (same config and seed, "
                         f"trained once): {', '.join(f'`{_relative(p, root)}`' for p in owners)}")
    return lines


def failed_lines(sweep: Sweep, root: Path) -> list[str]:
    return [f"- failed: `{row.label}` seed {r.result.get('seed')}: {r.result.get('error', '?')} "
            f"(`{_relative(r.path, root)}`)" for row in sweep.rows for r in row.runs
            if r.status == "failed"]


def _relative(path: Path, root: Path) -> str:
    try:  # the same words whether the report was asked for a relative or an absolute folder
        return str(path.resolve().relative_to(Path(root).resolve())) or "."
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- figures


def _curves(runs: list[Run], key: str, epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over runs per epoch; a diverged run adds only its finite epochs."""
    table = np.full((len(runs), len(epochs)), np.nan)
    for i, run in enumerate(runs):
        for entry in run.history:
            value = _finite(entry.get(key))
            if value is not None and entry.get("epoch") in epochs:
                table[i, int(np.searchsorted(epochs, entry["epoch"]))] = value
    mean = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in table.T])
    std = np.array([np.nanstd(c, ddof=1) if np.isfinite(c).sum() > 1 else 0.0 for c in table.T])
    return mean, std


def use_log_scale(values: list[float], forced: bool = False) -> bool:
    """Log y when asked, or when positive values span more than two decades (lr=1 beside 0.01)."""
    return bool(values) and min(values) > 0 and (forced or max(values) / min(values) > 100)


def band_text(sweep: Sweep) -> str:
    """What a loss figure's lines and bands are over: rows part-way through a study have
    fewer seeds than others, so a range ("mean ± std over 1-2 seeds")."""
    counts = sorted({len(row.completed) for row in sweep.rows} - {0}) or [1]
    seeds = str(counts[-1]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return "one seed" if seeds == "1" else f"mean ± std over {seeds} seeds"


def plot_losses(sweep: Sweep, path: Path, log_y: bool = False) -> Path:
    """Training and validation loss against epoch, one line per swept value (Figures 1-5)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    epochs = np.array(sorted({e["epoch"] for r in sweep.runs for e in r.history if "epoch" in e}))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    colors = plt.get_cmap("tab10" if len(sweep.rows) <= 10 else "tab20").colors
    handles = {}  # one legend for both panels, keyed by label
    drawn: set[int] = set()  # rows with a line in either panel
    panels = (("train_loss", "Training loss"), ("val_loss", "Validation loss"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        curves = []
        for i, row in enumerate(sweep.rows):
            runs = [r for r in row.runs if r.history]
            if runs and len(epochs):
                mean, std = _curves(runs, key, epochs)
                ok = ~np.isnan(mean)
                if ok.any():
                    curves.append((i, row, epochs[ok], mean[ok], std[ok]))
        log = use_log_scale([v for *_, mean, _ in curves for v in mean], log_y)
        for i, row, x, mean, std in curves:
            color = colors[i % len(colors)]
            (line,) = ax.plot(x, mean, marker="o", markersize=4, color=color)
            handles.setdefault(row.label + (" (diverged)" if row.diverged else ""), line)
            drawn.add(i)
            if row.diverged:  # the last finite point before the loss went non-finite
                ax.plot(x[-1:], mean[-1:], marker="X", markersize=10, color=color)
            # A log axis cannot show a band below zero: there it stops at the mean.
            lower = np.where(mean - std > 0, mean - std, mean) if log else mean - std
            ax.fill_between(x, lower, mean + std, color=color, alpha=0.2, linewidth=0)
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss" + (" (log scale)" if log else ""))
        if 0 < len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    # A value with nothing finite to draw (diverged in epoch 1, failed) still gets its entry.
    for i, row in enumerate(sweep.rows):
        if i not in drawn:
            why = "diverged: no finite loss" if row.diverged else status_cell(row)
            handles[f"{row.label} ({why})"] = Line2D([], [], color=colors[i % len(colors)],
                                                     marker="X", linestyle="none")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper",
                   title=", ".join(sweep.keys) or None)
    fig.suptitle(f"{sweep.name}: loss against epoch by {', '.join(sweep.keys) or 'run'} "
                 f"({band_text(sweep)})")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CSV


RUN_COLUMNS = ["path", "experiment", "status", "seed", "model", "init", "transforms",
               "num_params", "diverged_epoch", "error", "epochs", "test_loss", "test_acc",
               *(f"{when}_{k}" for when in ("ep1", "last")
                 for k in ("train_loss", "train_acc", "val_loss", "val_acc")),
               "seconds", "train_images_per_second", "device", "train_images", "val_images",
               "test_images", "overrides"]


def csv_row(run: Run, root: Path) -> dict[str, Any]:
    """One run: its metrics, then every config value under its dotted key."""
    r = run.result
    row: dict[str, Any] = {
        "path": _relative(run.path, root), "experiment": run.experiment, "status": run.status,
        "seed": r.get("seed"), "model": run.params.get("model"), "init": run.params.get("init"),
        "transforms": run.params.get("transforms"), "num_params": r.get("num_params"),
        "diverged_epoch": r.get("diverged_epoch"), "error": r.get("error"),
        "epochs": len(run.history), "test_loss": r.get("test_loss"), "test_acc": r.get("test_acc"),
        "seconds": run.seconds, "overrides": " ".join(map(str, r.get("overrides") or [])),
    }
    for when, last in (("ep1", False), ("last", True)):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            row[f"{when}_{key}"] = run.epoch_metric(key, last)
    for key in ("train_images_per_second", "device", "train_images", "val_images", "test_images"):
        row[key] = r.get(key)
    for key, value in flatten(r.get("config") or {}).items():
        row.setdefault(key, json.dumps(value) if isinstance(value, list | dict) else value)
    return row


def write_csv(runs: list[Run], root: Path, path: Path) -> Path:
    rows = [csv_row(run, root) for run in runs]
    config_columns = sorted({k for row in rows for k in row} - set(RUN_COLUMNS))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS + config_columns, restval="")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


# --------------------------------------------------------------------------- interaction

# experiment=interaction: the two keys whose interaction the seed's hypothesis is about.
INTERACTION_KEYS = ("optimizer.lr", "data.batch_size")


def is_interaction(sweep: Sweep) -> bool:
    return sorted(sweep.keys) == sorted(INTERACTION_KEYS)


def _grid(sweep: Sweep) -> tuple[list[Any], list[Any], dict[tuple[Any, Any], Row]]:
    """(lrs, batch sizes, (lr, batch size) -> row) of an interaction sweep."""
    i, j = (sweep.keys.index(k) for k in INTERACTION_KEYS)
    cells = {(row.values[i], row.values[j]): row for row in sweep.rows}
    return sorted({lr for lr, _ in cells}), sorted({b for _, b in cells}), cells


def best_lr_by_batch_size(sweep: Sweep) -> dict[Any, Any]:
    """batch size -> the learning rate with the best mean last-epoch validation accuracy
    among values that completed every seed above chance (ranked_rows)."""
    i, j = (sweep.keys.index(k) for k in INTERACTION_KEYS)
    best: dict[Any, Any] = {}
    for row, *_ in ranked_rows(sweep):  # best first
        best.setdefault(row.values[j], row.values[i])
    return dict(sorted(best.items()))


def scaling_line(sweep: Sweep) -> str:
    """Does the best learning rate move with the batch size, as the linear scaling rule
    (lr proportional to batch size) predicts?"""
    best = best_lr_by_batch_size(sweep)
    if len(best) < 2:
        return "Too few batch sizes completed to say whether the best learning rate moves."
    listing = ", ".join(f"{format_value(b)} → {format_value(lr)}" for b, lr in best.items())
    lrs = list(best.values())
    if len(set(lrs)) == 1:
        verdict = ("it does not move with the batch size: one value is best at every batch "
                   "size, against the linear scaling rule")
    elif all(a <= b for a, b in zip(lrs, lrs[1:], strict=False)):
        verdict = ("it rises with the batch size (never falls), as the linear scaling rule "
                   "predicts (lr ∝ batch size)")
    else:
        verdict = ("it moves with the batch size but does not rise monotonically, as the "
                   "linear scaling rule would have it")
    if len(set(lrs)) > 1:
        verdict += "; no learning rate is best at every batch size, as the seed supposed"
    return f"**Best learning rate per batch size:** {listing}; {verdict}."


def plot_interaction(sweep: Sweep, path: Path) -> Path:
    """Heatmap of mean last-epoch validation accuracy, lr across and batch size down, the
    best cell outlined; cells that diverged or collapsed for a seed are marked and left
    out of the colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lrs, sizes, cells = _grid(sweep)
    acc = np.full((len(sizes), len(lrs)), np.nan)
    fig, ax = plt.subplots(figsize=(1.4 * len(lrs) + 2.5, 0.9 * len(sizes) + 1.8),
                           layout="constrained")
    labels = {}
    for (lr, size), row in cells.items():
        y, x = sizes.index(size), lrs.index(lr)
        mean = row.stat("val_acc", last=True)[0]
        if row.contender and mean is not None:
            acc[y, x] = mean * 100
            labels[y, x] = f"{mean * 100:.2f}"
        else:
            labels[y, x] = "diverged" if row.diverged else status_cell(row)
    image = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", aspect="auto")
    middle = np.nanmean(acc) if np.isfinite(acc).any() else 0.0
    for (y, x), text in labels.items():  # white on the dark half of the colour map
        color = "white" if np.isfinite(acc[y, x]) and acc[y, x] < middle else "black"
        ax.text(x, y, text, ha="center", va="center", fontsize=9, color=color)
    fig.colorbar(image, ax=ax, label="mean validation accuracy, last epoch (%)")
    ranked = ranked_rows(sweep)
    if ranked:
        i, j = (sweep.keys.index(k) for k in INTERACTION_KEYS)
        best = ranked[0][0]
        x, y = lrs.index(best.values[i]), sizes.index(best.values[j])
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
    ax.set_xticks(range(len(lrs)), [format_value(v) for v in lrs])
    ax.set_yticks(range(len(sizes)), [format_value(v) for v in sizes])
    ax.set_xlabel("learning rate (optimizer.lr)")
    ax.set_ylabel("batch size (data.batch_size)")
    seeds = {r.result.get("seed") for r in sweep.runs}
    ax.set_title(f"{sweep.name}: best cell outlined ({len(seeds)} seed(s))")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def interaction_section(sweep: Sweep, heatmap: Path) -> list[str]:
    return [scaling_line(sweep), "",
            f"![{sweep.name}: validation accuracy by learning rate and batch size]"
            f"({heatmap.name})", ""]


# --------------------------------------------------------------------------- optuna

OPTUNA_DB = "optuna.db"  # where hparams_search=optuna keeps its study (the sweep folder)


def optuna_sections(root: Path) -> tuple[list[str], list[Path]]:
    """For every optuna study below `root`: its trials, optuna's own parameter importances
    (mean decrease in impurity) and a parallel-coordinates figure. optuna is imported only
    here, where a search left its study: it is an optional extra (and imports no torch)."""
    databases = sorted(root.rglob(OPTUNA_DB))
    if not databases:
        return [], []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    md: list[str] = []
    figures: list[Path] = []
    for db in databases:
        # As the search opened it (hydra_plugins/fmnist_lab_optuna): optuna 2.x under
        # SQLAlchemy 2 needs autocommit.
        storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}",
                                             engine_kwargs={"isolation_level": "AUTOCOMMIT"})
        prefix = "" if db.parent == root else _file_name(_relative(db.parent, root)) + "_"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            md += [f"## optuna search: `{study.study_name}` ({_relative(db, root)})", "",
                   f"{len(study.trials)} trials, {len(done)} completed."]
            if not done:
                md += [""]
                continue
            best = study.best_trial
            params = ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
            md += [f"Best last-epoch validation accuracy {best.value * 100:.2f} % in trial "
                   f"{best.number}: {params}.", "", *_importance_lines(study), ""]
            path = root / f"{prefix}optuna_parallel_coordinates.png"
            plot_parallel_coordinates(done, path)
            figures.append(path)
            md += [f"![optuna: trials in parallel coordinates]({path.name})", ""]
    return md, figures


def plot_parallel_coordinates(trials: list[Any], path: Path) -> Path:
    """One line per completed trial through its parameters, coloured by its objective.
    (optuna 2.x's own plot_parallel_coordinate fails with current matplotlib.) Numbers on a
    log axis where optuna sampled them so, choices spread evenly in the order seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for t in trials for k in t.params})
    columns, ticks = [], []
    for name in names:
        values = [t.params.get(name) for t in trials]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            log = getattr(trials[0].distributions.get(name), "log", False)
            x = np.log10(values) if log else np.asarray(values, dtype=float)
            span = x.max() - x.min() or 1.0
            columns.append((x - x.min()) / span)
            ticks.append(f"{name}\n{format_value(min(values))} … {format_value(max(values))}")
        else:
            order = list(dict.fromkeys(map(str, values)))
            columns.append(np.array([order.index(str(v)) for v in values]) / max(1, len(order) - 1))
            ticks.append(f"{name}\n{' / '.join(order)}")
    objective = np.array([t.value for t in trials]) * 100
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names)), 5), layout="constrained")
    norm = matplotlib.colors.Normalize(objective.min(), objective.max())
    cmap = plt.get_cmap("viridis")
    for i in np.argsort(objective):  # the best drawn last, on top
        ax.plot(range(len(names)), [c[i] for c in columns], color=cmap(norm(objective[i])),
                marker="o", alpha=0.8)
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 label="last-epoch validation accuracy (%)")
    ax.set_title(f"optuna: {len(trials)} completed trials")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _importance_lines(study: Any) -> list[str]:
    import optuna

    # Mean decrease in impurity of a random forest: optuna 2.x's default, fANOVA, breaks
    # on numpy 2 (ragged arrays).
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except ImportError:
        return ["Parameter importances: optuna's evaluator needs scikit-learn "
                "(`pip install scikit-learn`)."]
    except (RuntimeError, ValueError) as e:  # too few trials, a single value
        return [f"Parameter importances: not computable yet ({e})."]
    rows = [[f"`{name}`", f"{value:.3f}"] for name, value in importances.items()]
    return ["Parameter importances (optuna's mean-decrease-in-impurity evaluator, summing "
            "to 1):", "", _markdown_table(["parameter", "importance"], rows)]


# --------------------------------------------------------------------------- report


def compare_sections(root: Path) -> list[str]:
    """Every `compare.md` below `root` (fmnist_lab.compare) as a section of the report.

    Its headings shift so its top one sits at the report's section level (##); its image
    links, relative to its own folder, are made relative to `root`.
    """
    sections = []
    for path in sorted(root.rglob(COMPARE_FILE)):
        folder = _relative(path.parent, root)
        lines, headings, fenced = path.read_text().strip().splitlines(), [], False
        for i, line in enumerate(lines):
            fenced ^= line.startswith("```")
            if not fenced and re.match(r"#+\s", line):
                headings.append(i)
            if folder != ".":
                lines[i] = re.sub(r"(!\[[^\]]*\]\()(?![a-z]+://|/)", rf"\g<1>{folder}/", line)
        shift = 2 - min((len(lines[i]) - len(lines[i].lstrip("#")) for i in headings), default=2)
        for i in headings:
            lines[i] = "#" * shift + lines[i] if shift >= 0 else lines[i][-shift:]
        source = f"From `{folder}/{COMPARE_FILE}`."
        if headings:
            first = headings[0]
            lines[first + 1:first + 1] = ["", source]
        else:
            lines[:0] = ["## Representation comparison", "", source, ""]
        sections.append("\n".join(lines) + "\n")
    return sections


# --------------------------------------------------------------------------- time


def epoch_spans(run: Run) -> list[tuple[float, float]]:
    """When each of the run's epochs trained on the wall clock: (start, end), POSIX seconds.
    Runs recorded before epochs carried their clock (`ended`) have none."""
    spans = []
    for entry in run.history:
        seconds, ended = _finite(entry.get("seconds")), entry.get("ended")
        if seconds is not None and isinstance(ended, str):
            end = datetime.fromisoformat(ended).timestamp()
            spans.append((end - seconds, end))
    return spans


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one span: runs side by side count once, gaps not at all."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def machine_name(run: Run) -> str:
    m = run.result.get("machine") or {}
    where = m.get("gpu") or f"{m.get('cpu', 'unknown CPU')} ({m.get('cpu_count', '?')} cores)"
    threads = m.get("torch_threads")
    return where if m.get("gpu") or not threads else f"{where}, {threads} torch thread(s) a run"


def time_section(runs: list[Run]) -> list[str]:
    """The study's wall time, seed by seed, measured by its own epochs' clocks."""
    trained = [r for r in runs if not r.result.get("reused_from")]
    spans_of = {id(r): epoch_spans(r) for r in trained}  # each run's history read once
    clocked = [r for r in trained if spans_of[id(r)]]
    if not clocked:
        return []
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for run in clocked:
        by_seed[run.result.get("seed")].append(run)
    rows = []
    for label, group in [*((str(s), by_seed[s]) for s in sorted(by_seed, key=str)),
                         ("**all**", clocked)]:
        spans = [span for run in group for span in spans_of[id(run)]]
        rows.append([label, str(len(group)), _duration(union_seconds(spans)),
                     _duration(sum(end - start for start, end in spans))])
    machines = Counter(machine_name(r) for r in clocked)
    lines = ["## Time", "",
             "Wall time while the runs trained: the union of their epochs on the wall clock "
             "(start-up, the test pass and gaps between sittings left out; runs side by side "
             "count once, so seeds that overlapped add up to more than all). Run time adds "
             "every run's epochs. Trained runs only, not reused ones.", "",
             _markdown_table(["seed", "runs", "wall time", "run time"], rows), "",
             "Machines: " + "; ".join(f"{name}: {n} run(s)" for name, n in
                                      sorted(machines.items())) + "."]
    if len(clocked) < len(trained):
        lines.append(f"{len(trained) - len(clocked)} trained run(s) recorded before epochs "
                     "carried their clock are left out.")
    return lines + [""]


# --------------------------------------------------------------------------- README tables

# A README line naming an experiment of the record, "(record: `learning_rate`; ...)": the
# table that follows it is that experiment's, the seed's numbers beside ours.
README_RECORD = re.compile(r"\(record: `(\w+)`")


def _percent(mean: float | None, std: float | None) -> str:
    text = cell(mean, std, 100, 2)
    return text if mean is None else f"{text} %"


def seed_comparison_table(name: str, sweep: Sweep | None, key_header: str) -> str:
    """One experiment in the README: per value, n, the first and last epoch's training loss
    and the accuracy, the seed's beside ours; the seed's values not run yet say so.
    Cross-validation also gives each fold's test accuracy (the seed's accuracy there is the
    fold's). `sweep` None: nothing of it recorded yet."""
    cv = sweep.is_cross_validation if sweep else name == "cross_validation"
    last = last_epoch_label(sweep) if sweep else "ep 10"
    acc = "fold acc" if cv else "test acc"
    header = [", ".join(sweep.keys) if sweep else key_header, "n",
              f"train loss ep 1 → {last}: seed's", "ours", f"{acc}: seed's", "ours",
              *(["test acc: ours"] if cv else []), "status"]
    numbers = SEED_NUMBERS.get(name, {})

    def seed_cells(label: str) -> list[str]:
        seed = numbers.get(label)
        if seed is None:
            return ["—", "—"]
        return [seed_loss_text(seed), f"{seed['acc']:.2f} %"]

    rows = []
    for row in sweep.rows if sweep else []:
        first, last_loss = (cell(*row.stat("train_loss", last=at)[:2]) for at in (False, True))
        loss = "—" if first == "—" else f"{first} → {last_loss}"
        ours_acc = _percent(*row.stat("val_acc", last=True)[:2]) if cv else \
            _percent(*row.test_acc()[:2])
        loss_seed, acc_seed = seed_cells(row.label)
        rows.append([row.label, str(len(row.completed)), loss_seed, loss, acc_seed, ours_acc,
                     *([_percent(*row.test_acc()[:2])] if cv else []), status_cell(row)])
    recorded = {row.label for row in sweep.rows} if sweep else set()
    for label in numbers:
        if label not in recorded:
            loss_seed, acc_seed = seed_cells(label)
            rows.append([label, "0", loss_seed, "—", acc_seed, "—", *(["—"] if cv else []),
                         "not run yet"])
    mean_row = _fold_mean_row(sweep, numbers) if cv and sweep else None
    if mean_row:
        rows.append(mean_row)
    return _markdown_table(header, rows)


def _fold_mean_row(sweep: Sweep, numbers: dict[str, dict[str, float]]) -> list[str] | None:
    """Mean ± std over the folds (each fold once, whatever its seeds), the seed's beside;
    None below two completed folds, where a mean says nothing."""
    folds = len([row for row in sweep.rows if row.completed])
    if folds < 2:
        return None
    def over_folds(stat: Callable[[Row], tuple[float | None, float | None, int]]) -> tuple:
        return mean_std([stat(row)[0] for row in sweep.rows])[:2]

    first, last = (cell(*over_folds(lambda r, at=at: r.stat("train_loss", last=at)))
                   for at in (False, True))
    seed = {key: mean_std([n[key] for n in numbers.values()])[0]
            for key in ("train_loss_first", "train_loss_last", "acc")} if numbers else {}
    return ["**mean ± std**", f"{folds} folds", seed_loss_text(seed) if seed else "—",
            f"{first} → {last}", f"{seed['acc']:.2f} %" if seed else "—",
            _percent(*over_folds(lambda r: r.stat("val_acc", last=True))),
            _percent(*over_folds(Row.test_acc)), "over folds"]


def compare_readme_table(summary: dict[str, Any]) -> str:
    """The seed's Figure 12 beside ours (`compare.json` of fmnist_lab.compare): each compared
    layer's correlation matrix, its shape, the mean and std of all its entries (the seed's
    statistics, diagonal included) and the mean off the diagonal."""
    seed_numbers = SEED_NUMBERS.get("compare", {})
    header = ["layer", "matrix: seed's", "ours", "mean, all entries: seed's", "ours",
              "std: seed's", "ours", "mean off the diagonal", "dead units"]
    rows = []
    for name, layer in summary["layers"].items():
        seed = seed_numbers.get(name)
        shape = "({}, {})".format(*layer["shape"])
        rows.append([f"{layer['model']} ({layer['network']}), {layer['description']}",
                     "({}, {})".format(*seed["shape"]) if seed else "—", shape,
                     f"{seed['mean']:.4f}" if seed else "—", f"{layer['mean']:.4f}",
                     f"{seed['std']:.4f}" if seed else "—", f"{layer['std']:.4f}",
                     f"{layer['offdiag_mean']:.4f}",
                     f"{layer['dead_units']} of {layer['units']}"])
    return _markdown_table(header, rows)


def update_readme_tables(text: str, sweeps: list[Sweep],
                         compare: dict[str, Any] | None = None) -> str:
    """`text` with the table after each "(record: `EXPERIMENT`" line regenerated from
    `sweeps` ("(record: `compare`": from `compare`, a compare.json); a table of an
    experiment neither recorded nor in the seed is left alone."""
    by_name = {sweep.name: sweep for sweep in sweeps}
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        found = README_RECORD.search(lines[i])
        i += 1
        is_compare = found is not None and found[1] == "compare"
        if not found or (is_compare and compare is None) or (
                not is_compare and found[1] not in by_name and found[1] not in SEED_NUMBERS):
            continue
        while (i < len(lines) and not lines[i].startswith(("|", "#"))
               and not README_RECORD.search(lines[i])):
            out.append(lines[i])
            i += 1
        end = i
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        if end > i:  # the table: replaced whole, its first header cell kept for a new one
            key_header = lines[i].strip("|").split("|")[0].strip()
            table = compare_readme_table(compare) if is_compare else \
                seed_comparison_table(found[1], by_name.get(found[1]), key_header)
            out += table.split("\n")
            i = end
    return "\n".join(out)


def update_readme(readme: Path, root: Path) -> bool:
    """Regenerate `readme`'s record tables from the runs below `root`; whether it changed."""
    try:
        text = readme.read_text()
    except OSError as e:
        raise ReportError(f"--readme {readme}: cannot read it ({e.strerror})") from None
    if not README_RECORD.search(text):
        raise ReportError(f"--readme {readme}: no line names an experiment as "
                          "(record: `NAME`...), so it has no table to regenerate")
    found = sorted(root.rglob("compare.json"))
    compare = json.loads(found[0].read_text()) if found else None
    updated = update_readme_tables(text, group_sweeps(load_runs(root)), compare)
    if updated != text:
        write_text_atomic(readme, updated)
    return updated != text


@dataclass
class Report:
    """What `write_report` wrote, and one summary line per experiment."""

    markdown: Path
    csv: Path
    figures: list[Path]
    summary: list[str]


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "sweep"


def sweep_section(sweep: Sweep, root: Path, figure: Path,
                  trained_in: dict[Path, str]) -> list[str]:
    """One experiment's part of report.md: heading, table, verdict, shared runs, failures,
    figure. `trained_in` maps a run folder to the experiment that trained it."""
    md = [f"## {sweep.name}: {', '.join(sweep.keys) or 'single configuration'}", "",
          held_fixed_line(sweep), ""]
    if sweep.is_cross_validation:
        md += [cross_validation_section(sweep), ""]
    else:
        md += [sweep_table(sweep), "", best_line(sweep), ""]
    return md + [*shared_lines(sweep, root, trained_in), *failed_lines(sweep, root), "",
                 f"![{sweep.name}: loss against epoch]({figure.name})", ""]


def summary_line(sweep: Sweep) -> str:
    """One line for the terminal: how many runs, and the best value or the fold accuracy."""
    if sweep.is_cross_validation:
        mean, std, n = mean_std([row.stat("val_acc", True)[0] for row in sweep.rows])
        return f"{sweep.name}: {n} folds, fold accuracy {cell(mean, std, 100, 2)} %"
    ranked = ranked_rows(sweep)
    best = (f"; best {', '.join(sweep.keys)}={ranked[0][0].label} "
            f"(val acc {cell(*ranked[0][1:3], 100, 2)} %)" if ranked else "")
    return (f"{sweep.name}: {len(sweep.rows)} values, {len(sweep.runs)} runs "
            f"({status_cell(Row((), sweep.runs))}){best}")


def write_report(root: Path, log_y: bool = False) -> Report:
    """Read every run below `root`; write report.md, results.csv and the figures into it."""
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder (give the sweep or study folder)")
    runs = load_runs(root)
    if not runs:
        raise ReportError(f"no {RESULTS_FILE} below {root} (run a sweep first: "
                          "python -m fmnist_lab.train -m experiment=NAME)")
    sweeps = group_sweeps(runs)
    trained_in = {r.path.resolve(): r.experiment for r in runs}
    trained = sum(1 for r in runs if not r.result.get("reused_from"))
    # No date and no absolute path: the same runs give the same report, byte for byte.
    md = ["# fmnist-lab report", "",
          f"{len(runs)} runs, {trained} of them trained ({len(runs) - trained} reuse a run of "
          "the same config and seed from another experiment). Cells are mean ± "
          "sample std (ddof=1) over the n seeds that completed (a single number when n=1); "
          "accuracies in %; `ep 1` is the first epoch and `ep N` the last; seconds is the mean "
          "run time. Every run is listed in `results.csv`.", ""]
    figures, summary = [], []
    for sweep in sweeps:
        figure = plot_losses(sweep, root / f"{_file_name(sweep.name)}_loss.png", log_y)
        md += sweep_section(sweep, root, figure, trained_in)
        figures.append(figure)
        if is_interaction(sweep):
            heatmap = plot_interaction(sweep, root / f"{_file_name(sweep.name)}_heatmap.png")
            md += interaction_section(sweep, heatmap)
            figures.append(heatmap)
        summary.append(summary_line(sweep))
    md += compare_sections(root)
    md += time_section(runs)
    optuna_md, optuna_figures = optuna_sections(root)
    md += optuna_md
    figures += optuna_figures
    markdown = root / "report.md"
    markdown.write_text("\n".join(md).rstrip() + "\n")
    return Report(markdown, write_csv(runs, root, root / "results.csv"), figures, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmnist_lab.report",
        description="Tables (report.md), one CSV row per run (results.csv) and loss figures "
                    "(*_loss.png) from the results.json files below a sweep or study folder.")
    parser.add_argument("dir", type=Path, help="sweep folder or a whole study folder")
    parser.add_argument("--log-y", action="store_true",
                        help="log-scale loss axes (default: only where values span > 2 decades)")
    parser.add_argument("--readme", type=Path, metavar="FILE",
                        help="also regenerate the table after each line of FILE that names an "
                             "experiment as (record: `NAME`...): the seed's numbers beside ours")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.dir, log_y=args.log_y)
        changed = update_readme(args.readme, args.dir) if args.readme is not None else None
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the report: {e}", file=sys.stderr)
        return 1
    lines = [f"wrote {report.markdown}", *(f"  {line}" for line in report.summary),
             f"also {report.csv} and {len(report.figures)} figure(s): "
             + ", ".join(p.name for p in report.figures)]
    if changed is not None:
        lines.append(f"{args.readme}: record tables "
                     + ("regenerated" if changed else "already current"))
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `report DIR | head`: the reader left early; every file is written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
