"""experiment=tasks' runs grouped for its readers: task -> setting -> one cell per value,
each cell the value's runs over seeds. The tasks section (fmnist_lab.report.tasks), the
transfer regret (report.transfer) and tunability (report.tunability) all read this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_lab.keys import BOOKKEEPING, SPEED_SWITCHES
from fmnist_lab.report.runs import MULTIRUN_FILE, Run, value_key
from fmnist_lab.report.stats import mean_std

EXPERIMENTS = ("tasks", "tasks_control")
REFERENCE = "fmnist_55k"
CONTROL = "fmnist_1k_control"  # experiment=tasks_control's runs, as a task of their own
CONTROL_REFERENCE = "fmnist_1k"
# The four one-at-a-time settings of conf/experiment/tasks.yaml, by the key each moves.
SETTINGS = {"optimizer.lr": "learning rate", "data.batch_size": "batch size",
            "init": "initialisation", "transforms": "augmentation"}
TASK_ORDER = ("fmnist_55k", "fmnist_5k", "fmnist_1k", "fmnist_5k_noisy", "fmnist_5k_upper",
              "fmnist_5k_7px", "digits", CONTROL)


@dataclass
class Cell:
    """One value of one setting on one task: its runs, one per seed."""

    value: Any
    runs: list[Run] = field(default_factory=list)

    @property
    def candidate(self) -> bool:
        """Fit to be a task's best: every seed completed above chance (not collapsed)."""
        return bool(self.runs) and all(r.status == "completed" for r in self.runs)

    @property
    def failure(self) -> str:
        """What kept a value from being a candidate: its seeds' statuses."""
        return ", ".join(sorted({r.status for r in self.runs if r.status != "completed"})) \
            or "—"

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        """Mean, std and n over seeds of the last validation accuracy or of test_acc."""
        values = [r.epoch_metric("val_acc", last=True) if key == "val_acc" else
                  r.result.get(key) for r in self.runs if r.result.get("status") == "completed"]
        return mean_std(values)


@dataclass
class TaskSetting:
    """One setting on one task: its cells in the values' order."""

    task: str
    key: str
    cells: list[Cell]

    @property
    def seeds(self) -> list[Any]:
        """The seeds every value has run (a record part-way through has some values at
        more seeds than others): what the regret's values are compared at."""
        by_cell = [{r.result.get("seed") for r in c.runs} for c in self.cells if c.runs]
        return sorted(set.intersection(*by_cell), key=str) if by_cell else []

    def best(self) -> Cell | None:
        """The candidate with the best mean validation accuracy."""
        scored = [(c.stat("val_acc")[0], i) for i, c in enumerate(self.cells) if c.candidate]
        scored = [(m, i) for m, i in scored if m is not None]
        return self.cells[max(scored)[1]] if scored else None

    def within_noise(self, cell: Cell) -> bool:
        """Behind the best by no more than the two values' combined seed-to-seed std."""
        best = self.best()
        if best is None or not cell.candidate:
            return False
        (m1, s1, _), (m2, s2, _) = best.stat("val_acc"), cell.stat("val_acc")
        return m2 is not None and m1 - m2 <= math.hypot(s1 or 0.0, s2 or 0.0)


def task_of(run: Run) -> str | None:
    """The task a run of experiment=tasks or tasks_control belongs to; None for others. A
    run whose command line changed the data of the task it names is another task, named by
    both: `fmnist_5k (data.train_size=500, data.classes=[1,5,7,9])`."""
    if run.experiment not in EXPERIMENTS:
        return None
    if run.experiment == "tasks_control":
        return CONTROL
    task = str(run.params.get("task"))
    changed = data_overrides(run)
    return f"{task} ({', '.join(changed)})" if changed else task


def data_overrides(run: Run) -> list[str]:
    """The data keys a run's command line set beyond its task's file: neither a setting the
    sweep moves nor bookkeeping or a speed switch (data.channels_last)."""
    changed = []
    for override in run.result.get("overrides") or []:
        key = override.split("=", 1)[0].lstrip("+~")
        if (key.startswith("data.") and key not in SETTINGS and key not in BOOKKEEPING
                and key not in SPEED_SWITCHES):
            changed.append(override.lstrip("+"))
    return changed


def run_length(run: Run) -> str:
    """"10 epochs", or a step budget's "400 steps", from the run's config."""
    steps = run.params.get("trainer.max_steps")
    if isinstance(steps, int) and steps >= 1:
        return f"{steps:,} steps"
    epochs = run.params.get("trainer.max_epochs")
    if not isinstance(epochs, int):
        return "an unrecorded length"
    return f"{epochs} epoch{'s' if epochs != 1 else ''}"


def optimizer_steps(run: Run) -> int | None:
    """The optimizer steps a run trains: its step budget, or its epochs' batches."""
    steps = run.params.get("trainer.max_steps")
    if isinstance(steps, int) and steps >= 1:
        return steps
    images, batch = run.result.get("train_images"), run.params.get("data.batch_size")
    epochs = run.params.get("trainer.max_epochs")
    if not images or not batch or not isinstance(epochs, int):
        return None
    return math.ceil(images / batch) * epochs


def baseline_values(runs: list[Run]) -> dict[str, Any]:
    """Each setting's baseline value: as the sweep's multirun.yaml composed it (the value every
    job has unless it moves that setting), else the one most runs of the task share."""
    recorded = _sweep_baseline(runs[0].path.parent / MULTIRUN_FILE) if runs else None
    if recorded is not None:
        return recorded
    baseline = {}
    for key in SETTINGS:
        counts: dict[str, tuple[int, Any]] = {}
        for run in runs:
            value = run.params.get(key)
            n, _ = counts.get(value_key(value), (0, value))
            counts[value_key(value)] = (n + 1, value)
        baseline[key] = max(counts.values(), key=lambda c: c[0])[1] if counts else None
    return baseline


def _sweep_baseline(path: Path) -> dict[str, Any] | None:
    """The settings' values in a sweep's recorded config (None without one, or unreadable)."""
    try:
        import yaml  # PyYAML, OmegaConf's own dependency: no Hydra needed
    except ImportError:
        return None
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
        choices = config["hydra"]["runtime"]["choices"]
        return {key: choices[key] if key in choices else
                config[key.split(".")[0]][key.split(".")[1]] for key in SETTINGS}
    except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError):
        return None


def group_tasks(runs: list[Run]) -> dict[str, dict[str, TaskSetting]]:
    """task -> setting key -> its cells: the runs at every other setting's baseline value,
    by the value of this one (values in the order of the sweep, numbers ascending)."""
    by_task: dict[str, list[Run]] = {}
    for run in runs:
        task = task_of(run)
        if task is not None:
            by_task.setdefault(task, []).append(run)
    grouped: dict[str, dict[str, TaskSetting]] = {}
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    for task in sorted(by_task, key=lambda t: (order.get(t, len(order)), t)):
        task_runs = by_task[task]
        baseline = baseline_values(task_runs)
        grouped[task] = {}
        for key in SETTINGS:
            cells: dict[str, Cell] = {}
            for run in task_runs:
                if all(value_key(run.params.get(k)) == value_key(v)
                       for k, v in baseline.items() if k != key):
                    value = run.params.get(key)
                    cells.setdefault(value_key(value), Cell(value)).runs.append(run)
            values = list(cells.values())
            if all(isinstance(c.value, int | float) for c in values):
                values.sort(key=lambda c: c.value)
            grouped[task][key] = TaskSetting(task, key, values)
    return grouped
