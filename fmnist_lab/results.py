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

RESULTS_FILE = "results.json"
# A run in one of these states is never trained again; "failed" and "running" are retried.
FINISHED = ("completed", "diverged")
# Config keys that change where a run is written or how fast, never what it learns (a
# diverged run stops sooner or later in the same epoch): left out of a run's identity
# (run_key) and never "swept" in the report.
BOOKKEEPING = frozenset({
    "name", "seed", "num_threads", "reuse_runs_in", "divergence_check_every", "data.root",
    "data.download", "data.eval_batch_size", "data.group_batches",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
})


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


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


# Keys added to the config after runs were recorded, with the value that does what the code
# did before they existed. At that value a key is left out of a run's identity, so a recorded
# run (results/study) keeps matching the same configuration composed by newer code.
IMPLIED: dict[str, Any] = {
    # Regularisation in the networks: off, as the seed's networks had none.
    "model.dropout": 0.0,
    "model.norm": "none",
    # The optimizer became a config group; its default, sgd, is the SGD all runs
    # used, built from the same lr, momentum and weight_decay keys as before.
    "optimizer._target_": "torch.optim.SGD",
    "optimizer._partial_": True,
    # scheduler=none adds no key. Label smoothing 0 is plain cross-entropy.
    "loss.label_smoothing": 0.0,
}
# Config groups added later, with the choice that does what the code did before (for the
# report's reading of recorded runs, which have no such choice).
IMPLIED_CHOICES: dict[str, str] = {"optimizer": "sgd", "scheduler": "none"}


def run_key(config: dict[str, Any]) -> str:
    """What identifies a trained run: its composed config, bookkeeping aside, and its seed.

    Two runs with the same key learn the same thing, whichever experiment launched them.
    """
    identity = {k: v for k, v in flatten(config).items()
                if k not in BOOKKEEPING and not (k in IMPLIED and IMPLIED[k] == v)}
    identity["seed"] = config.get("seed")
    text = json.dumps(identity, sort_keys=True, default=str)
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
        if (result.get("run_key") == key and result.get("status") in FINISHED
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
