"""Run results on disk, and the Hydra callbacks that make sweeps safe to leave for hours.

- `results.json` is written atomically and read back by the resume logic, the callbacks and
  the report, which also shares `flatten` (a config as dotted keys) with the HParams log.

- `CheckSweepConfigs` composes and checks every job's config before the first one trains, so
  a typo in the fifth value of a grid fails in a second, not after four finished runs.
- `SweepSummary` counts the runs by status at the end and exits non-zero naming failed runs.
- `threads_per_job` splits the machine's cores between jobs that run side by side.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fmnist_lab.schema import ConfigError, check_config

RESULTS_FILE = "results.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None when there is none (or it is not JSON)."""
    try:
        return json.loads((run_dir / RESULTS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: {"optimizer": {"lr": 1}} -> {"optimizer.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def grid_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job the basic sweeper will launch, as it computes them."""
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


class CheckSweepConfigs(Callback):
    """Before a grid sweep launches anything, compose and check the config of every job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return  # optuna & co. draw their values as they go: each run checks its own
        loader = GlobalHydra.instance().config_loader()
        for job in grid_jobs(config):
            try:
                check_config(loader.load_sweep_config(config, job))
            except ConfigError as e:
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
    if "submitit" in target.lower():
        return launcher.get("cpus_per_task") or None
    return None


def read_statuses(sweep_dir: Path) -> dict[str, list[str]]:
    """status -> the runs (by their overrides) found below `sweep_dir`."""
    statuses: dict[str, list[str]] = {}
    for path in sorted(sweep_dir.rglob(RESULTS_FILE)):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            result = {"status": "unreadable"}
        name = " ".join(result.get("overrides", [])) or str(path.parent)
        statuses.setdefault(result.get("status", "unknown"), []).append(name)
    return statuses


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
