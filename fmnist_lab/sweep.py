"""The Hydra callbacks that make sweeps safe to leave for hours, and their run names.

- `CheckSweepConfigs` checks a config before Hydra makes a run folder for it: every job's of a
  grid sweep before the first one trains, so a typo in the fifth value of a grid fails in a
  second, not after four finished runs; a single run's before its folder exists, so bad input
  leaves nothing behind.
- `NameRunsByWhatVaries` names a sweep's run folders by the job number and the values that
  differ between its jobs (`3_optimizer.lr=0.1,seed=1`): what all jobs share stays in
  `.hydra/` and results.json, out of folder names and TensorBoard's run list.
- `SweepSummary` counts the runs by status at the end and exits non-zero naming failed runs.
- `threads_per_job` splits the machine's cores between jobs that run side by side.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from fmnist_lab.keys import constant_keys, swept_keys_declared
from fmnist_lab.results import read_statuses
from fmnist_lab.schema import ConfigError, check_config
from fmnist_lab.sources import DataError


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job the sweep will launch, as its sweeper computes them:
    the basic sweeper's grid, or, with `one_at_a_time`, every grid point once per value of
    each listed key, where a value the grid point already has (the shared baseline) is not
    run again: the first list that holds the baseline's value runs it."""
    grid = [job for batch in BasicSweeper.split_arguments(_grid_overrides(config), None)
            for job in batch]
    one_at_a_time = config.hydra.sweeper.get("one_at_a_time")
    if not one_at_a_time:
        return grid
    moves = [(o.get_key_element(), value)
             for o in OverridesParser.create().parse_overrides(
                 [f"{k}={v}" for k, v in one_at_a_time.items()])
             for value in (list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()])]
    loader = GlobalHydra.instance().config_loader()
    jobs = []
    for point in grid:
        baseline = loader.load_sweep_config(config, point)  # one composition per grid point
        choices = baseline.hydra.runtime.choices
        ran_baseline = False
        for key, value in moves:
            at_baseline = str(choices[key]) == str(value) if key in choices else \
                OmegaConf.select(baseline, key) == value
            if at_baseline and ran_baseline:
                continue
            ran_baseline |= at_baseline
            jobs.append([*point, f"{key}={value}"])
    return jobs


def _grid_overrides(config: DictConfig) -> list[Override]:
    """The sweeper's params, then the command line's overrides: what the grid is made of."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    return OverridesParser.create().parse_overrides(arguments)


class NameRunsByWhatVaries(Callback):
    """Leave the overrides every job shares out of the run folders' names.

    Each job's config is composed again from the sweep's `hydra.overrides.hydra`, so one more
    override there reaches every job's `override_dirname`, whatever the launcher. The names
    depend on the command alone: the same command finds the same folders and resumes.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            swept = swept_keys_declared(config)
        except OverrideParseException:
            return  # a malformed sweep: the sweeper names it, in one line
        if not swept:
            return  # one job: nothing varies, so its overrides name it (not a bare `0_`)
        excluded = list(config.hydra.job.config.override_dirname.exclude_keys)
        excluded += [k for k in constant_keys(config) if k not in excluded]
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]")


class CheckSweepConfigs(Callback):
    """Before a grid sweep launches anything, compose and check the config of every job;
    before a single run's folder is made, check its config."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_config(config)
        except (ConfigError, DataError) as e:
            sys.exit(f"error: {e}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(config.hydra.sweeper.get("_target_", "")).endswith(
                ("BasicSweeper", "OneAtATimeSweeper")):
            return  # optuna & co. draw their values as they go: each run checks its own
        loader = GlobalHydra.instance().config_loader()
        for job in sweep_jobs(config):
            try:
                check_config(loader.load_sweep_config(config, job))
            except (ConfigError, DataError) as e:
                sys.exit(f"error: {e} (sweep job: {' '.join(job)}); nothing was run")


def threads_per_job(hydra_cfg: DictConfig) -> int | None:
    """Cores for one job when the launcher runs several on one machine; None: torch's default."""
    launcher = hydra_cfg.get("launcher") or {}
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "Joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        parallel = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 = all cores
        return max(1, cores // max(1, parallel))
    if "submitit" in target.lower() or "slurm" in target.lower():
        # The CPUs SLURM gave the job (hydra/launcher=slurm_cpu), else what the launcher asks.
        given = os.environ.get("SLURM_CPUS_PER_TASK", "")
        return int(given) if given.isdigit() else launcher.get("cpus_per_task") or None
    return None


class SweepSummary(Callback):
    """At the end of a sweep: count the runs by status; exit non-zero naming failed runs."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = read_statuses(sweep_dir)
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(statuses.items()))
        print(f"sweep {sweep_dir}: {counts or 'no runs'}")
        print(f"tables and figures: python -m fmnist_lab.report {sweep_dir}")
        if statuses.get("failed"):
            for name in statuses["failed"]:
                print(f"  failed: {name}", file=sys.stderr)
            sys.exit(1)
