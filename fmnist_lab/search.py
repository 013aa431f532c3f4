"""An optuna search's study (hparams_search=optuna), read without torch: its storage, its trials
counted by state, optuna's parameter importances, and `python -m fmnist_lab.search dashboard
SWEEP_DIR`, optuna-dashboard on it (`make dashboard DIR=...`).

The sweeper (hydra_plugins/fmnist_lab_sweepers/optuna.py) keeps the study in an optuna journal
file in the sweep folder, `optuna.journal`: an append-only log that several processes share
through a lock file, where SQLite's database lock fails under concurrent writers. A trial's
user attributes say what the report needs: `job` (the run folder's number), `run_dir` (the
run folder, relative to the sweep folder), and `interrupted` on an attempt cut off by Ctrl-C
or a killed process, whose parameters were asked again as a new trial (`retry_of` names the
attempt): such attempts are not trials of the search and count nowhere.

optuna is imported inside the functions: report.py imports this module for every report.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

JOURNAL = "optuna.journal"  # the study's storage in the sweep folder
STUDY_NAME = "fmnist_lab"
INTERRUPTED = "interrupted"  # user attribute of an attempt that was cut off and asked again
# What a trial's state is called in the report and in `trial_counts`.
STATES = ("complete", "pruned", "fail", "running", "waiting")
# How a job of the search learns its trial: the sweeper sets it (hydra.job.env_set) to the
# trial's number; the job finds the storage, study and pruner in its own hydra.sweeper.
TRIAL_ENV = "FMNIST_LAB_OPTUNA_TRIAL"


def open_storage(spec: str | Path, **database_options: Any) -> Any:
    """An optuna storage: a journal file (a path), or a database URL (`sqlite:///...`,
    `postgresql://...`: optuna's RDBStorage, given `database_options`, e.g. its heartbeat).
    A server that does not answer fails within seconds, not the system's minutes."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    text = str(spec)
    if "://" in text:
        engine = ({"connect_args": {"connect_timeout": 10}} if text.startswith("postgresql")
                  else {})
        return optuna.storages.RDBStorage(text, engine_kwargs=engine, **database_options)
    return JournalStorage(JournalFileBackend(text))


def hide_password(url: str) -> str:
    """A database URL as it may be printed: its password starred."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", str(url))


def find_journals(root: str | Path) -> list[Path]:
    """Every search's journal below `root` (a sweep folder, or a tree of them)."""
    return sorted(p for p in Path(root).rglob(JOURNAL) if p.is_file())


def load_studies(storage: Any) -> list[Any]:
    """Every study kept in `storage` (an optuna storage, a journal path or a URL)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str | Path):
        storage = open_storage(storage)
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def is_interrupted(trial: Any) -> bool:
    """An attempt that was cut off and asked again as another trial: not one of the search's
    trials (its state is FAIL)."""
    return bool(trial.user_attrs.get(INTERRUPTED))


def search_trials(study: Any) -> list[Any]:
    """The study's trials, interrupted attempts left out."""
    return [t for t in study.get_trials(deepcopy=False) if not is_interrupted(t)]


def trial_counts(study: Any) -> dict[str, int]:
    """The search's trials by state, {"complete": 12, "pruned": 7, "fail": 1, "running": 0,
    "waiting": 0}, with "interrupted" (attempts asked again) beside them."""
    counts = Counter(t.state.name.lower() for t in search_trials(study))
    result = {state: counts.get(state, 0) for state in STATES}
    result["interrupted"] = sum(is_interrupted(t) for t in study.get_trials(deepcopy=False))
    return result


def trial_table(study: Any) -> list[dict[str, Any]]:
    """One row per trial of the search, in trial order, for tables and figures that draw
    pruned trials beside completed ones: number, state ("complete", "pruned", "fail",
    "running", "waiting"), params, value (a completed trial's objective; a pruned one's last
    reported validation accuracy), last_epoch (the last epoch it reported), run_dir."""
    rows = []
    for t in search_trials(study):
        steps = sorted(t.intermediate_values)
        value = t.value if t.state.name == "COMPLETE" else (
            t.intermediate_values[steps[-1]] if steps and t.state.name == "PRUNED" else None)
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     "value": value, "last_epoch": steps[-1] if steps else None,
                     "run_dir": t.user_attrs.get("run_dir")})
    return rows


def param_importances(study: Any, seed: int = 0) -> dict[str, float]:
    """optuna's fANOVA parameter importances over the completed trials (pruned and failed
    ones have no final value), summing to 1, largest first; seeded, so a report regenerates
    exactly. Raises ImportError without scikit-learn, and ValueError or RuntimeError where they
    cannot be computed yet (no completed trial, a single one, a parameter that never varied).

    fANOVA rather than optuna 5's default (PED-ANOVA): PED-ANOVA compares the top 10 % of
    trials with the rest, two trials out of a search of 20; fANOVA uses every completed
    trial. (optuna 2's fANOVA broke on numpy 2, hence the project's old workaround.)"""
    import optuna

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def trial_run_dirs(study: Any, sweep_dir: str | Path) -> dict[int, Path]:
    """Trial number -> its run folder (for the trials that ran one), from `run_dir`."""
    return {t.number: Path(sweep_dir) / t.user_attrs["run_dir"] for t in search_trials(study)
            if t.user_attrs.get("run_dir")}


def best_overrides(sweep_dir: str | Path) -> list[str]:
    """The command-line overrides that train the search's best trial again (what `make search`
    retrains at seeds 0-2): its run's overrides, the search's own (hparams_search, hydra.*)
    and the plumbing (threads, speed switches) aside. ValueError where the search has no
    completed trial."""
    import json

    journal = journal_of(sweep_dir)
    study = next(iter(load_studies(journal)), None)
    done = [t for t in search_trials(study) if t.state.name == "COMPLETE"] if study else []
    if not done:
        raise ValueError(f"{journal.parent}: the search has no completed trial yet")
    best = max(done, key=lambda t: t.value)
    run = journal.parent / best.user_attrs["run_dir"]
    from fmnist_lab.keys import LAUNCH_GROUPS, PLUMBING

    overrides = json.loads((run / "results.json").read_text())["overrides"]
    # What the run learned from, not how or where it ran (the retrain's command sets those).
    return [o for o in overrides if not o.startswith("hydra")
            and o.split("=", 1)[0].lstrip("+~") not in {*LAUNCH_GROUPS, *PLUMBING, "seed"}]


# --------------------------------------------------------------------------- the dashboard


def journal_of(sweep_dir: str | Path) -> Path:
    """The journal of the search in `sweep_dir` (or the journal file itself); a one-line
    ValueError where there is none."""
    path = Path(sweep_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder (give a search's sweep folder, "
                         "hydra.sweep.dir of hparams_search=optuna)")
    found = find_journals(path)
    if not found:
        raise ValueError(f"{path}: no {JOURNAL} in it or below it (give a search's sweep "
                         "folder, hydra.sweep.dir of hparams_search=optuna)")
    if len(found) > 1:
        names = ", ".join(str(p.parent) for p in found)
        raise ValueError(f"{path}: holds {len(found)} searches ({names}); give one of them")
    return found[0]


def serve_dashboard(sweep_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
    """optuna-dashboard on the search's journal until Ctrl-C; prints its address first (port
    0: a free port, the one printed)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard

    journal = journal_of(sweep_dir)
    app = optuna_dashboard.wsgi(open_storage(journal))

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # no line per request
            pass

    httpd = make_server(host, port, app, server_class=Server, handler_class=QuietHandler)
    shown = "localhost" if host in ("127.0.0.1", "localhost") else host
    print(f"optuna-dashboard on {journal}: http://{shown}:{httpd.server_port}/ "
          "(Ctrl-C stops it)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fmnist_lab.search",
                                     description="An optuna search's study.")
    commands = parser.add_subparsers(dest="command", required=True)
    dash = commands.add_parser("dashboard", help="optuna-dashboard on a search's storage")
    dash.add_argument("sweep_dir", help="the search's sweep folder (or its optuna.journal)")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port (8080; 0: a free one)")
    best = commands.add_parser("best", help="the overrides that train the best trial again")
    best.add_argument("sweep_dir", help="the search's sweep folder (or its optuna.journal)")
    args = parser.parse_args(argv)
    try:
        if args.command == "best":
            print(shlex.join(best_overrides(args.sweep_dir)))
        else:
            serve_dashboard(args.sweep_dir, host=args.host, port=args.port)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
