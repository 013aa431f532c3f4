"""`hparams_search=optuna`'s sweeper: hydra-optuna-sweeper's, made to continue a search.

(Here, not in fmnist_lab/, because Hydra takes plugins only from the hydra_plugins package;
Hydra imports every module of that package at start-up, so optuna is imported only when
a search starts.)

The plugin keeps its study wherever `storage` says (conf/hparams_search/optuna.yaml: an
SQLite file in the sweep folder), but each invocation runs `n_trials` more trials numbered
from job 0 again. This one reads the study first, so a search that was interrupted and is
started again with the same `hydra.sweep.dir` picks up where it stopped:

- `n_trials` is the search's total: only the trials still missing are run;
- job numbers (run folders `<num>_...`) continue after the study's trials;
- a trial left running by the interruption is marked failed and its values are asked
  again first (the plugin runs jobs in this process, so nothing else can be running it);
- the sampler's random numbers are drawn afresh: TPESampler(seed=0) would otherwise start
  over and propose the first invocation's random start-up trials again.
"""

from __future__ import annotations

from pathlib import Path

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

try:  # the optional extra: without it there is nothing to resume
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover
    OptunaSweeper = None

INTERRUPTED = "interrupted"  # user attribute of a trial whose run was cut off


class ResumableOptunaSweeper(OptunaSweeper or object):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        import optuna
        from optuna.trial import TrialState

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # SQLite creates the file, not its folder, and the launcher makes the folder later.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        impl = self.sweeper
        if not isinstance(impl.storage, str):
            return
        # optuna 2.x under SQLAlchemy 2 leaves its schema stamp uncommitted and the SQLite
        # file locked; committing every statement is all a search in one process needs.
        impl.storage = optuna.storages.RDBStorage(
            impl.storage, engine_kwargs={"isolation_level": "AUTOCOMMIT"})
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:  # a new search
            return
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)]
        impl.n_trials = max(0, impl.n_trials - len(done))
        impl.job_idx = len(trials)
        if hasattr(impl.sampler, "reseed_rng"):
            impl.sampler.reseed_rng()
        print(f"optuna: continuing study {impl.study_name!r} with {len(done)} finished trial(s);"
              f" {impl.n_trials} to go")
