"""`python -m fmnist_lab.train [overrides]`: one training run, or a sweep with `-m`.

The command line around fmnist_lab.run.train: a run fits one network, tests it, and records
it in its Hydra run folder. Started again in the same folder (a sweep re-run with the same
`hydra.sweep.dir`), a finished run is skipped and an interrupted one resumes from its last
checkpoint; a failed run is recorded and a sweep goes on; Ctrl-C and SIGTERM stop with the
command that resumes.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fmnist_lab.data import StepBudget
from fmnist_lab.faults import (
    Interrupted,
    RunHeld,
    claim_config,
    hold_run,
    progress_kept,
    stop_on_signals,
)
from fmnist_lab.module import quiet_lightning
from fmnist_lab.results import FINISHED, find_results, read_results, record, run_key, write_results
from fmnist_lab.run import objective, reuse, train
from fmnist_lab.schema import ConfigError
from fmnist_lab.sources import DataError
from fmnist_lab.sweep import threads_per_job


def _summary(result: dict, out_dir: Path) -> str:
    unit = "step" if "diverged_step" in result else "epoch"  # a step budget's run, or not
    if result["status"] == "diverged":
        return (f"{result['model']}: diverged in {unit} {result[f'diverged_{unit}']} "
                f"(non-finite loss) -> {out_dir}")
    if result["status"] == "pruned":
        return (f"{result['model']}: pruned by the search after {unit} "
                f"{result[f'pruned_{unit}']} (validation accuracy "
                f"{result['history'][-1]['val_acc']:.4f}) -> {out_dir}")
    speed = result["train_images_per_second"]
    length = (f"{result['history'][-1]['step']} steps" if unit == "step"
              else f"{len(result['history'])} epochs")
    return (f"{result['model']}: test accuracy {result['test_acc']:.4f}, test loss "
            f"{result['test_loss']:.4f} after {length} "
            f"({speed:.0f} train images/s on {result['device']}) -> {out_dir}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one run; returns its last validation accuracy (the objective of optuna sweeps).

    One process at a time trains in a run folder: another one that reaches it stops (a
    single run) or skips it (a sweep). Ctrl-C and SIGTERM stop with the command that resumes.
    """
    quiet_lightning()
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    try:
        with stop_on_signals(), hold_run(out_dir):
            return _run(cfg, hydra_cfg, out_dir, multirun)
    except RunHeld as e:
        if not multirun:
            sys.exit(f"error: {e}")
        print(f"skipping {out_dir.name}: {e}")
        return None
    except Interrupted as stop:
        print(_interrupted(stop, cfg, hydra_cfg, out_dir, multirun), file=sys.stderr)
        sys.exit(stop.exit_code)


def _run(cfg: DictConfig, hydra_cfg: DictConfig, out_dir: Path, multirun: bool) -> float | None:
    overrides = list(hydra_cfg.overrides.task)
    choices = {group: str(choice) for group, choice in hydra_cfg.runtime.choices.items()
               if not group.startswith("hydra/") and choice is not None}

    previous = read_results(out_dir)
    if previous and previous.get("status") in FINISHED:
        # Folder names leave out what all jobs share, so a rerun with another shared value
        # (trainer.precision, say) reaches the same folder: only the same run is skipped.
        key = run_key(OmegaConf.to_container(cfg, resolve=True))
        if previous.get("run_key") not in (None, key):
            sys.exit(f"error: {out_dir} holds a run of another config (run_key "
                     f"{previous['run_key']}, this one {key}); give this sweep another "
                     "hydra.sweep.dir, or rerun the command that made it")
        print(f"skipping {out_dir.name}: already {previous['status']}")
        return objective(previous)

    if cfg.num_threads is None and threads_per_job(hydra_cfg):
        cfg.num_threads = threads_per_job(hydra_cfg)
    try:
        roots = _reuse_roots(cfg, hydra_cfg, multirun)
        if not roots:
            result = train(cfg, out_dir, overrides, choices)
        else:
            # Claimed first: a sweep beside this one that is training the same run is waited
            # for, then reused, instead of trained a second time.
            key = run_key(OmegaConf.to_container(cfg, resolve=True))
            with claim_config(roots[0], key, out_dir):
                result = (next(filter(None, (reuse(cfg, out_dir, root, overrides, choices)
                                             for root in roots)), None)
                          or train(cfg, out_dir, overrides, choices))
    except (ConfigError, DataError) as e:
        if multirun:
            _record_failure(out_dir, cfg, overrides, choices, e)
        sys.exit(f"error: {e}")
    except Exception as e:
        if _out_of_requeues(e):  # submitit's word, raised inside the run at its time limit
            e = RuntimeError(_out_of_requeues_reason(hydra_cfg))
        # One run's bug must not take a sweep down: record it, go on, fail at the end.
        _record_failure(out_dir, cfg, overrides, choices, e)
        (out_dir / "traceback.txt").write_text(traceback.format_exc())
        message = (f"error: run failed: {type(e).__name__}: {e} "
                   f"(traceback in {out_dir}/traceback.txt)")
        if not multirun:
            sys.exit(message)
        print(message, file=sys.stderr)
        return None
    print(_summary(result, out_dir))
    return objective(result)


def _out_of_requeues(e: BaseException) -> bool:
    """submitit's UncompletedJobError from its signal handler: a SLURM job signalled before its
    time limit with no requeue left (hydra.launcher.max_num_timeout)."""
    return type(e).__name__ == "UncompletedJobError" and "timed-out too many times" in str(e)


def _out_of_requeues_reason(hydra_cfg: DictConfig) -> str:
    launcher = hydra_cfg.get("launcher") or {}
    return (f"the SLURM job reached its time limit (hydra.launcher.timeout_min="
            f"{launcher.get('timeout_min')}) with no requeue left (hydra.launcher."
            f"max_num_timeout={launcher.get('max_num_timeout')}): give it more time or more "
            "requeues, and the same command resumes the run from its last checkpoint")


def _reuse_roots(cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> list[Path]:
    """The folders searched for a finished run of the same config and seed (reuse_runs_in: a
    folder or a list of them; null: the sweep's own folder), claims kept in the first."""
    given = cfg.reuse_runs_in
    if given is None:
        return [Path(hydra_cfg.sweep.dir)] if multirun else []
    return [Path(p) for p in ([given] if isinstance(given, str) else given)]


def _interrupted(stop: Interrupted, cfg: DictConfig, hydra_cfg: DictConfig, out_dir: Path,
                 multirun: bool) -> str:
    """Where the run stopped, what is kept (what a rerun resumes from), the command that goes
    on; for a sweep, a second line with the runs that finished."""
    key, folder = (("hydra.sweep.dir", hydra_cfg.sweep.dir) if multirun
                   else ("hydra.run.dir", out_dir))
    args = sys.argv[1:]
    if not any(arg.startswith(f"{key}=") for arg in args):
        args.append(f"{key}={folder}")  # left out, the folder is a new one named by the time
    command = (f"python -m fmnist_lab.train {shlex.join(args)}"
               if Path(sys.argv[0]).resolve() == Path(__file__).resolve()
               else f"the same command with {key}={folder}")  # a launcher's job process
    checkpoints = out_dir / "checkpoints"
    budget = StepBudget.of(cfg.trainer)
    if budget:
        done, total = progress_kept(checkpoints, "global_step"), budget.steps
        if done == 0:
            where = f"before step {budget.interval_end(0)}, its first validation"
        elif done >= total:
            where = f"while testing: all {total} steps are kept in {checkpoints}"
        else:
            where = f"in step {done + 1} of {total}: steps 1-{done} are kept in {checkpoints}"
    else:
        done, total = progress_kept(checkpoints, "epoch"), cfg.trainer.max_epochs
        if done == 0:
            where = "before any epoch finished"
        elif done >= total:
            where = f"while testing: all {total} epochs are kept in {checkpoints}"
        else:
            epochs = "epoch 1 is" if done == 1 else f"epochs 1-{done} are"
            where = f"in epoch {done + 1} of {total}: {epochs} kept in {checkpoints}"
    run = f" in run {out_dir.name}" if multirun else ""
    message = f"interrupted by {stop}{run} {where}. To resume: {command}"
    if multirun:
        finished = [f"{path.name} ({result['status']})"
                    for path, result in find_results(Path(folder)).items()
                    if result.get("status") in FINISHED]
        message += f"\nfinished runs in {folder}: {', '.join(finished) or 'none'}"
    return message


def _record_failure(out_dir: Path, cfg: DictConfig, overrides: list[str],
                    choices: dict[str, str], e: Exception) -> None:
    # Unresolved: a config can fail in its own interpolations.
    write_results(out_dir, record("failed", OmegaConf.to_container(cfg, resolve=False),
                                  overrides, choices, error=f"{type(e).__name__}: {e}"))


def _from_ctrl_c(error: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions that led to `error`."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl-C outside a run's own handler: Hydra composing a sweep's next job, or a joblib
        # sweep's parent while its workers train. Landing inside OmegaConf it can surface as
        # another error, which Hydra reports and exits 1 on: still an interruption.
        if not _from_ctrl_c(stop):
            raise
        print("interrupted: finished runs are kept; the same command skips them and resumes "
              "the others from their last checkpoints", file=sys.stderr)
        sys.exit(130)
