"""Pruning inside a run of hparams_search=optuna: after every epoch (under a step budget,
every validation point) the run reports its validation accuracy to its trial, and stops at
once when the search's pruner says so.

The sweeper (hydra_plugins/fmnist_lab_sweepers/optuna.py) puts the trial's number in the job's
environment (fmnist_lab.search.TRIAL_ENV, through hydra.job.env_set, so it is in no run key or
folder name); the storage, study and pruner are the job's own hydra.sweeper settings. Outside
a search there is no callback and nothing changes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl

from fmnist_lab.search import TRIAL_ENV, open_storage

log = logging.getLogger("fmnist_lab")


class TrialPruning(pl.Callback):
    """Reports `val/acc` as the trial's intermediate value at step = epoch (1, 2, ...), or
    the optimizer step under a step budget (`by_step`), and stops training where the pruner
    prunes the trial: `pruned_at` says where."""

    def __init__(self, trial: Any, by_step: bool = False) -> None:
        self.trial = trial
        self.by_step = by_step
        self.pruned_at: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/acc")
        if self.trial is None or value is None:
            return
        at = trainer.global_step if self.by_step else trainer.current_epoch + 1
        unit = "step" if self.by_step else "epoch"
        try:
            self.trial.report(float(value), at)
            prune = self.trial.should_prune()
        except Exception as e:  # the study went away: train on, unpruned
            log.warning("optuna trial %d: cannot report %s %d (%s); no more pruning",
                        self.trial.number, unit, at, e)
            self.trial = None
            return
        if prune:
            log.info("optuna: trial %d pruned after %s %d", self.trial.number, unit, at)
            self.pruned_at = at
            trainer.should_stop = True


def trial_pruning(by_step: bool = False) -> TrialPruning | None:
    """The callback of this job's trial, when it runs in an optuna search; else None."""
    number = os.environ.get(TRIAL_ENV)
    if not number:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else optuna.pruners.NopPruner()
    storage = open_storage(sweeper.storage)
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(sweeper.study_name), int(number))
    return TrialPruning(optuna.trial.Trial(study, trial_id), by_step)
