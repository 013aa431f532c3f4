"""Reading runs and grouping them into sweeps: one row per swept value, seeds together."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_lab.keys import BOOKKEEPING, IMPLIED, IMPLIED_CHOICES, LAUNCH_GROUPS
from fmnist_lab.report.stats import finite, mean_std
from fmnist_lab.results import find_results, flatten

MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a sweep: its grid and command line


# The seed study's order; any other experiment follows, by name.
STUDY_ORDER = ("architecture", "learning_rate", "batch_size", "weight_init", "augmentation",
               "cross_validation")


FOLD_KEY = "data.fold"


# A network that predicts one class scores 1/k on k stratified classes: a run whose
# validation accuracy stays within this of it learned nothing, NaN or not.
CHANCE_MARGIN = 0.01


class ReportError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


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
        return "collapsed" if status == "completed" and self.collapsed_at else status

    @property
    def unit(self) -> str:
        """What the run's history is keyed by: "step" for a step budget's run (validated at
        step points), else "epoch"."""
        return "step" if self.history and "step" in self.history[0] else "epoch"

    @property
    def collapsed_at(self) -> int | None:
        """The epoch (or step) from which validation accuracy stayed at chance to the end,
        where that is two validations or more (after one a slow start looks the same)."""
        chance = 1 / (self.result.get("num_classes") or 10) + CHANCE_MARGIN
        streak: list[int] = []
        for entry in self.history:
            acc = finite(entry.get("val_acc"))
            streak = streak + [entry.get(self.unit)] if acc is None or acc <= chance else []
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
        return finite(self.history[-1 if last else 0].get(key))

    @property
    def seconds(self) -> float | None:
        times = [e.get("seconds") for e in self.history]
        return float(sum(times)) if times and None not in times else None


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


def value_key(value: Any) -> str:
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
               if k in declared or len({value_key(r.params.get(k)) for r in runs}) > 1]

    def determined_by_group(key: str) -> bool:
        group = key.split(".", 1)[0]
        if group not in groups or group not in varying or key == group:
            return False
        seen: dict[str, str] = {}
        return all(seen.setdefault(value_key(r.params.get(group)), value_key(r.params.get(key)))
                   == value_key(r.params.get(key)) for r in runs)

    return [k for k in varying if not determined_by_group(k)]


def search_folder(run: Run) -> Path | None:
    """The folder of the search (hparams_search=...) a run is a trial of; None for a run of
    a grid. Each search is a study of its own (its journal, its sampler's history): two
    searches of one experiment that tried the same configuration are two trials, not two
    seeds of one row."""
    return run.path.parent if (run.result.get("choices") or {}).get("hparams_search") else None


def group_sweeps(runs: list[Run], root: Path | None = None) -> list[Sweep]:
    """Runs by experiment (a search's trials by their search's folder as well), then by
    their swept values; rows in grid order. Where one experiment ran several searches, each
    is named by its folder (relative to `root` where given)."""
    groups: dict[tuple[str, Path | None], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.experiment, search_folder(run)), []).append(run)
    searches: dict[str, int] = {}
    for experiment, _ in groups:
        searches[experiment] = searches.get(experiment, 0) + 1
    sweeps = []
    for (name, folder), exp_runs in groups.items():
        if folder is not None and searches[name] > 1:
            name = f"{name} ({relative(folder, root) if root is not None else folder.name})"
        keys = swept_keys(exp_runs)
        rows: dict[tuple[str, ...], Row] = {}
        for run in exp_runs:
            values = tuple(run.params.get(k) for k in keys)
            rows.setdefault(tuple(value_key(v) for v in values), Row(values)).runs.append(run)
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
            first_seen.setdefault((i, value_key(row.values[i])), index)
    return sorted(rows, key=lambda r: tuple(
        r.values[i] if i in numeric else first_seen[i, value_key(r.values[i])] for i in columns))


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


def relative(path: Path, root: Path) -> str:
    try:  # the same words whether the report was asked for a relative or an absolute folder
        return str(path.resolve().relative_to(Path(root).resolve())) or "."
    except ValueError:
        return str(path)
