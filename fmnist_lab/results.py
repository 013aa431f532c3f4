"""`results.json`, the record of one run: written by train, read by resume, sweeps and report.

No torch and no Lightning here, so the report and any script can read a study where torch
is not installed. Every file is written to a temporary name, then renamed: a reader never
sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from fmnist_lab.keys import identity

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.npz"  # per-image predictions of a completed run (run.py)
# A run in one of these states is never trained again; "failed" and "running" are retried.
# "pruned": stopped by an optuna search's pruner (hparams_search=optuna), neither failed nor
# trained to the end, so never reused as another run's twin (TRAINED).
TRAINED = ("completed", "diverged")
FINISHED = (*TRAINED, "pruned")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def record(status: str, config: dict[str, Any], overrides: list[str] | None = None,
           choices: dict[str, str] | None = None, **outcome: Any) -> dict[str, Any]:
    """A run's results.json record: its status, its outcome (metrics, history, error,
    reused_from...), then what it ran: seed, overrides, group choices, the composed config
    and, for a run that finished, its run key."""
    result = {"status": status, **outcome, "seed": config.get("seed"),
              "overrides": list(overrides or []), "choices": dict(choices or {}),
              "config": config}
    if status in FINISHED:
        result["run_key"] = run_key(config)
    return result


def write_results(out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write `result` (see `record`) as out_dir/results.json: the one place a run's record
    is written, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RESULTS_FILE, result)
    return result


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None when there is none (or it is not a JSON object)."""
    try:
        result = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return result if isinstance(result, dict) else None


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: {"optimizer": {"lr": 1}} -> {"optimizer.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_key(config: dict[str, Any]) -> str:
    """What identifies a trained run: its composed config, bookkeeping aside, and its seed.

    Two runs with the same key learn the same thing, whichever experiment launched them.
    """
    text = json.dumps(identity(flatten(config)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_results(root: Path) -> dict[Path, dict[str, Any]]:
    """run folder -> its results.json, for every readable one below `root`."""
    found = {}
    for path in sorted(Path(root).rglob(RESULTS_FILE)):
        result = read_results(path.parent)
        if result is None:
            print(f"warning: skipping unreadable {path}", file=sys.stderr)
            continue
        found[path.parent] = result
    return found


def find_trained_twin(root: Path, key: str, besides: Path) -> tuple[Path, dict] | None:
    """A finished run below `root` that trained the config and seed `key` itself (not a
    reuse of another run), other than the one in `besides`."""
    besides = Path(besides).resolve()
    for folder, result in find_results(root).items():
        if (result.get("run_key") == key and result.get("status") in TRAINED
                and not result.get("reused_from") and folder.resolve() != besides):
            return folder, result
    return None


def read_statuses(root: Path) -> dict[str, list[str]]:
    """status -> the runs (by their overrides) found below `root`."""
    statuses: dict[str, list[str]] = {}
    for folder, result in find_results(root).items():
        name = " ".join(result.get("overrides", [])) or str(folder)
        statuses.setdefault(result.get("status", "unknown"), []).append(name)
    return statuses
