"""`hydra/sweeper=optuna` (`hparams_search=optuna`): a search on optuna >= 4's ask-and-tell API
(optuna and the project imported inside the methods: Hydra imports plugins at every start-up).

The surface is hydra-optuna-sweeper's: `n_trials`, `n_jobs`, `direction`, `study_name`,
`storage`, `sampler` and `pruner` as `_target_`s, and `params` in Hydra's sweep syntax
(`choice(...)`, `interval(a, b)`, `int(interval(...))`, `tag(log, interval(...))`,
`range(...)`); a sweep given on the command line joins them, a plain value there pins a key.

- The study lives in `storage`, by default an optuna journal file in the sweep folder, which
  several processes share (where SQLite's database lock fails under concurrent writers).
- `n_trials` is the search's total: a search started again, or a second worker on the same
  sweep folder, asks only for the trials still missing, under a lock, each counted the moment
  it is asked, so workers never exceed n_trials together.
- A trial's run folder is numbered by the trial (`<number>_<overrides>`): two workers never
  share a folder. Trials run in batches of `n_jobs` through Hydra's launcher.
- A trial cut off by Ctrl-C, SIGTERM or a killed process (a RUNNING trial whose owner is gone:
  by host and pid for a journal file, by optuna's heartbeat for a database, workers.py) is
  marked `interrupted`, failed, and its parameters asked again as a new trial, first, by
  whichever worker asks next: the retry runs in the interrupted trial's folder and resumes its
  run from the last checkpoint, its epochs' values reported again. A live worker's trials are
  never taken over. With a database, a worker with nothing left to ask waits for the trials
  running elsewhere, so that one whose worker dies is still retried.
- Each job learns its trial number from an environment variable (fmnist_lab.search.TRIAL_ENV,
  set through hydra.job.env_set: not in the run's config, key or folder name) and reports its
  validation accuracy after every epoch, where the pruner may stop it (fmnist_lab.pruning).
  A run that stopped so says `status: pruned` in its results.json and is told PRUNED; a run
  that completed or diverged is told COMPLETE with its objective (0 for diverged); anything
  else FAIL.
- The sampler is seeded as configured; a process joining a study with trials draws from
  seed + number of trials, so it does not propose the first worker's start-up trials again.

Bad input (unknown key, n_trials < 1, an unknown or misconfigured sampler or pruner, an empty
or malformed search space, a storage that cannot be written) exits with one line naming the
key in `setup`, before any trial is asked and before the sweep folder exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.fmnist_lab_sweepers import workers
from hydra_plugins.fmnist_lab_sweepers.space import corner_values, distribution, quote, suggest

log = logging.getLogger(__name__)

KEY = "hydra.sweeper"


def _fail(key: str, message: str) -> None:
    sys.exit(f"error: {KEY}.{key}: {message}")


class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: Any = 20, n_jobs: Any = 1, direction: Any = "maximize",
                 study_name: Any = "fmnist_lab", storage: Any = None, sampler: Any = None,
                 pruner: Any = None, params: Any = None, heartbeat_interval: Any = 60,
                 grace_period: Any = None, **unknown: Any) -> None:
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.direction = direction
        self.study_name = study_name
        self.storage_spec = storage
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.params = params
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.unknown = unknown
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    # ------------------------------------------------------------------ setup: check all

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        import optuna
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self._check_settings()
        self.sampler = self._instantiate("sampler", self.sampler_cfg, "samplers",
                                         "BaseSampler", "optuna.samplers.TPESampler")
        # No pruner: nothing is pruned (optuna's own default would be its MedianPruner).
        self.pruner = (self._instantiate("pruner", self.pruner_cfg, "pruners", "BasePruner",
                                         "optuna.pruners.MedianPruner")
                       or optuna.pruners.NopPruner())
        self.space, self.fixed = self._search_space(
            OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        self._check_configs()
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.study = self._open_study()  # last: it makes the sweep folder

    def _check_settings(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.unknown:
            key = sorted(self.unknown)[0]
            _fail(key, "no such key; the sweeper takes n_trials, n_jobs, direction, "
                       "study_name, storage, sampler, pruner, params, heartbeat_interval, "
                       "grace_period")
        for key in ("n_trials", "n_jobs", "heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if value is None and key == "grace_period":
                continue  # optuna's: twice the heartbeat interval
            if not is_int(value) or value < 1:
                _fail(key, f"{value!r} is not allowed: an integer >= 1")
        if self.direction not in ("maximize", "minimize"):
            _fail("direction", f"{self.direction!r} is not allowed: maximize or minimize")
        if not isinstance(self.study_name, str) or not self.study_name:
            _fail("study_name", f"{self.study_name!r} is not allowed: a name")
        if not isinstance(self.storage_spec, str) or not self.storage_spec:
            _fail("storage", f"{self.storage_spec!r} is not allowed: a journal file "
                             "(${hydra.sweep.dir}/optuna.journal) or a database URL")

    def _instantiate(self, key: str, cfg: Any, kind: str, base: str, example: str) -> Any:
        """The sampler or pruner `cfg` names (`_target_` and its arguments), None for none;
        one line naming the key where the target does not exist, is not an optuna sampler
        (pruner), or does not take the arguments given."""
        import importlib

        import optuna
        from hydra.utils import instantiate

        if cfg is None:
            return None
        if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("_target_"), str):
            _fail(key, f"{cfg!r} is not allowed: a _target_ with its arguments, e.g. "
                       f"hydra/sweeper/{key}=NAME (conf/hydra/sweeper/{key}/) or {example}")
        module = getattr(optuna, kind)
        base_class = getattr(module, base)
        target = cfg._target_
        module_name, _, name = target.rpartition(".")
        try:  # not hydra.utils.get_object, which logs its own lines about a missing one
            found = getattr(importlib.import_module(module_name), name, None)
        except Exception:
            found = None
        if not (isinstance(found, type) and issubclass(found, base_class)):
            known = sorted(f"optuna.{kind}.{name}" for name, value in vars(module).items()
                           if isinstance(value, type) and issubclass(value, base_class)
                           and value is not base_class and not name.startswith("_"))
            _fail(f"{key}._target_", f"{target!r} is not an optuna {key}: one of "
                                     f"{', '.join(known)}")
        try:
            return instantiate(cfg)
        except Exception as e:
            cause = e.__cause__ or e
            _fail(key, f"{target}: {one_line(cause)} (another {key} with its own arguments: "
                       f"hydra/sweeper/{key}=NAME, conf/hydra/sweeper/{key}/NAME.yaml)")

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, tuple[str, Any]],
                                                            list[str]]:
        """name -> (the override's key as written, its optuna distribution), and the
        overrides every job gets: `params`, then the command line (the last word on a key
        wins). One line naming the key for an empty or malformed space."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        if self.params is not None and not isinstance(self.params, DictConfig):
            _fail("params", f"{self.params!r} is not allowed: keys with sweeps, e.g. "
                            "optimizer.lr: tag(log, interval(0.001, 0.1))")
        parser = OverridesParser.create()
        entries: dict[str, tuple[str, Any]] = {}  # name -> (where it was given, override)
        for key, value in (self.params or {}).items():
            try:
                override = parser.parse_override(f"{key}={value}")
            except HydraException as e:
                _fail(f"params.{key}", f"{value!r} does not parse: "
                                       f"{str(e).splitlines()[0].strip()}")
            entries[override.key_or_group] = (f"params.{key}", override)
        for argument in arguments:
            override = parser.parse_override(argument)  # Hydra parsed these already
            entries[override.key_or_group] = (argument, override)
        space, fixed = {}, []
        for name, (where, override) in entries.items():
            if not override.is_sweep_override():
                fixed.append(override.input_line)
                continue
            try:
                space[name] = (override.get_key_element(), distribution(override))
            except ValueError as e:
                if where.startswith("params."):
                    _fail(where, str(e))
                sys.exit(f"error: {name} (command line {where}): {e}")
        if not space:
            _fail("params", "the search space is empty: give keys with sweeps, e.g. "
                            "hydra.sweeper.params='{optimizer.lr: tag(log, interval(0.001, 0.1))}'")
        return space, fixed

    def _corner_jobs(self) -> list[list[str]]:
        """Job override lists that together try every choice and both ends of every interval
        once: the others at their first value."""
        corners = {name: corner_values(dist) for name, (_, dist) in self.space.items()}
        base = {name: values[0] for name, values in corners.items()}
        jobs = [self._overrides(base)]
        for name, values in corners.items():
            jobs += [self._overrides({**base, name: v}) for v in values[1:]]
        return jobs

    def _check_configs(self) -> None:
        """Compose the jobs of `_corner_jobs` and check them as every run's config is checked
        (fmnist_lab.schema): a key that does not exist, a bound out of range or data that
        cannot be read fails now, in one line, before any trial or run folder."""
        from fmnist_lab.schema import ConfigError, check_config
        from fmnist_lab.sources import DataError

        loader = self.hydra_context.config_loader
        for job in self._corner_jobs():
            try:
                composed = loader.load_sweep_config(self.config, job)
            except Exception as e:
                sys.exit(f"error: {KEY}.params: {one_line(e)} (a job of the search: "
                         f"{' '.join(job)})")
            try:
                check_config(composed)
            except ConfigError as e:
                where = f"{KEY}.params.{e.key}" if e.key in self.space else e.key
                sys.exit(f"error: {where}: {e} (a job of the search: {' '.join(job)})")
            except DataError as e:
                sys.exit(f"error: {e}")

    def _overrides(self, params: dict[str, Any]) -> list[str]:
        from hydra.core.override_parser.types import Override

        return [*self.fixed, *(f"{self.space[name][0]}={Override._get_value_element_as_str(v)}"
                               for name, v in params.items())]

    def _open_study(self) -> Any:
        import optuna

        from fmnist_lab.search import hide_password

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.storage_spec
        made = None
        if "://" not in spec:
            path = Path(spec).absolute()
            missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab"):
                    pass
            except OSError as e:
                for folder in missing:  # leave nothing behind
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                _fail("storage", f"{spec}: cannot be written ({e.strerror or e})")
            spec = str(path)
            made = path
        self.storage_path = made
        try:
            self.storage = workers.open_storage(spec, self.heartbeat_interval, self.grace_period)
            with self._worker_lock():
                return optuna.create_study(study_name=self.study_name, storage=self.storage,
                                           direction=self.direction, load_if_exists=True,
                                           sampler=self.sampler, pruner=self.pruner)
        except Exception as e:
            if made is not None:
                raise
            # A database that cannot be reached: wrong host, password or database name.
            if isinstance(e, ModuleNotFoundError):
                _fail("storage", f"{hide_password(spec)}: its database driver is not installed "
                                 f"({e}): pip install the one SQLAlchemy names")
            cause = getattr(e, "orig", None) or e.__cause__ or e
            said = str(cause).strip().splitlines()
            _fail("storage", f"{hide_password(spec)} cannot be reached: "
                             f"{said[0] if said else type(cause).__name__}")

    # ------------------------------------------------------------------ the search

    def sweep(self, arguments: list[str]) -> Any:
        from optuna.trial import TrialState

        from fmnist_lab.search import is_interrupted

        study = self.study
        # Hydra's record of the sweep, as its basic sweeper keeps it: the report reads the
        # swept keys from it.
        record = self.sweep_dir / "multirun.yaml"
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # a database's search made none yet
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        OmegaConf.save(self.config, tmp)
        os.replace(tmp, record)
        returns: list[Any] = []
        first = True
        told_waiting = False
        while True:
            with self._worker_lock():
                workers.find_dead(study, self._abandon)
                trials = study.get_trials(deepcopy=False)
                taken = [t for t in trials if not is_interrupted(t)
                         and t.state != TrialState.WAITING]
                n = min(self.n_jobs, self.n_trials - len(taken))
                if first:
                    self._announce(study, trials, taken)
                    self._seed_sampler(study, len(trials))
                    first = False
                if n > 0:
                    batch = [self._ask(study) for _ in range(n)]
            if n > 0:
                returns += self._run(study, batch)
                continue
            running = [t for t in taken if t.state == TrialState.RUNNING]
            if not (running and workers.has_heartbeat(study._storage)):
                break
            if not told_waiting:  # a worker that dies: its trial is retried here
                print(f"optuna: waiting for {len(running)} trial(s) running elsewhere")
                told_waiting = True
            time.sleep(self.heartbeat_interval)
        self._finish(study)
        return returns

    def _announce(self, study: Any, trials: list[Any], taken: list[Any]) -> None:
        if not trials:
            print(f"optuna: new study {self.study_name!r} in {self._where()}; {self.n_trials} "
                  "trials to go")
            return
        finished = [t for t in taken if t.state.is_finished()]
        running = len(taken) - len(finished)
        print(f"optuna: continuing study {self.study_name!r} in {self._where()} with "
              f"{len(finished)} finished trial(s)"
              + (f", {running} running elsewhere" if running else "")
              + f"; {max(0, self.n_trials - len(taken))} to go")

    def _where(self) -> str:
        return str(self.storage_path or self.storage_spec)

    def _seed_sampler(self, study: Any, n_trials: int) -> None:
        """A study with trials: draw from seed + their number, or afresh without a seed."""
        if n_trials == 0 or self.sampler_cfg is None:
            return
        from hydra.utils import instantiate

        seed = self.sampler_cfg.get("seed")
        if seed is not None:
            study.sampler = instantiate(self.sampler_cfg, seed=int(seed) + n_trials)
        elif hasattr(study.sampler, "reseed_rng"):
            study.sampler.reseed_rng()

    def _ask(self, study: Any) -> Any:
        """A trial with its parameters drawn and its owner (this process) and run folder
        number recorded; a retry gets its interrupted attempt's epochs back."""
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
            warnings.simplefilter("ignore")
            trial = study.ask()
        for name, (_, dist) in self.space.items():
            suggest(trial, name, dist)
        for key, value in workers.owner().items():
            trial.set_user_attr(key, value)
        if "job" not in trial.user_attrs:
            trial.set_user_attr("job", trial.number)
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None:
            for before in study.get_trials(deepcopy=False):
                if before.number == retry_of:
                    for step, value in sorted(before.intermediate_values.items()):
                        trial.report(value, step)
        return trial

    def _job(self, trial: Any) -> list[str]:
        """The job's overrides: its parameters, the fixed overrides, its run folder named by
        its job number, and its trial number in the environment."""
        from fmnist_lab.faults import ENDED_HOLDER_ENV
        from fmnist_lab.search import TRIAL_ENV

        job = self._overrides(dict(trial.params))
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        if isinstance(subdir, str) and "${hydra.job.num}" in subdir:
            named = subdir.replace("${hydra.job.num}", str(trial.user_attrs["job"]))
            job.append(f"hydra.sweep.subdir={quote(named)}")
        job.append(f"++hydra.job.env_set.{TRIAL_ENV}={quote(str(trial.number))}")
        if trial.user_attrs.get("dead_owner"):  # its run.lock: take it over, on any host
            job.append(f"++hydra.job.env_set.{ENDED_HOLDER_ENV}="
                       f"{quote(trial.user_attrs['dead_owner'])}")
        return job

    def _run(self, study: Any, batch: list[Any]) -> list[Any]:
        """Launch the batch, tell optuna each trial's outcome. Ctrl-C, SIGTERM or a job's
        exit: the batch's trials still running are marked interrupted and asked again."""
        from optuna.trial import TrialState

        jobs = [self._job(t) for t in batch]
        try:
            with workers.Heartbeat(study._storage, [t._trial_id for t in batch]):
                returns = self.launcher.launch(jobs, initial_job_idx=batch[0].user_attrs["job"])
        except BaseException:
            with self._worker_lock():
                for trial in batch:
                    if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                        self._abandon(study, study._storage.get_trial(trial._trial_id))
            raise
        for trial, ret in zip(batch, returns, strict=True):
            state, value, note = self._outcome(trial, ret)
            if note:
                log.warning("optuna: trial %d failed: %s", trial.number, note)
            # skip_if_finished: a trial whose heartbeat a busy machine delayed past the grace
            # period was failed and asked again elsewhere; its outcome here is not told twice.
            study.tell(trial, value, state=state, skip_if_finished=True)
        return list(returns)

    def _outcome(self, trial: Any, ret: Any) -> tuple[Any, float | None, str | None]:
        """(state, value, why it failed) of a finished job: its results.json's status where
        it wrote one (pruned, completed, diverged), else its return value."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        from fmnist_lab.results import read_results

        run_dir = None
        with contextlib.suppress(Exception):
            run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
            trial.set_user_attr("run_dir", os.path.relpath(run_dir, self.sweep_dir.absolute()))
        if ret.status != JobStatus.COMPLETED:
            return TrialState.FAIL, None, one_line(ret._return_value)
        status = (read_results(run_dir) or {}).get("status") if run_dir else None
        if status == "pruned":
            return TrialState.PRUNED, None, None
        value = ret.return_value
        if value is None or status not in (None, "completed", "diverged"):
            return TrialState.FAIL, None, f"run {status or 'returned nothing'}"
        try:
            return TrialState.COMPLETE, float(value), None
        except (TypeError, ValueError):
            return TrialState.FAIL, None, f"the job returned {value!r}, not a number"

    def _finish(self, study: Any) -> None:
        from optuna.trial import TrialState

        from fmnist_lab.search import trial_counts

        counts = trial_counts(study)
        text = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        print(f"optuna: study {self.study_name!r}: {text or 'no trials'}")
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial
        print(f"optuna: best value {best.value:.4f} in trial {best.number}: "
              + ", ".join(f"{k}={v}" for k, v in best.params.items()))
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                         "best_value": best.value,
                                         "best_trial": best.number, "trials": counts}),
                       self.sweep_dir / "optimization_results.yaml")

    # ------------------------------------------------------------------ workers

    def _worker_lock(self) -> contextlib.AbstractContextManager[None]:
        return workers.worker_lock(self.storage_path, self.storage, self.study_name)

    def _abandon(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        from fmnist_lab.search import INTERRUPTED

        attrs = trial.user_attrs
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(dict(trial.params), user_attrs={
            "job": attrs.get("job", trial.number), "retry_of": trial.number,
            "dead_owner": f"{attrs.get('host')}:{attrs.get('pid')}"})


# ---------------------------------------------------------------------- helpers


def one_line(e: Any) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()
