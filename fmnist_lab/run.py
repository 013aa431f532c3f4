"""Build and train one run: what the command line (fmnist_lab.train), the benchmark and the
representation comparison share.

`train` fits a network, tests it, and records the run in its folder: results.json (through
fmnist_lab.results), the TensorBoard events, `checkpoints/last.ckpt` (what an interrupted run
resumes from) and `predictions.npz` (the class predicted for every validation and test image,
which pairs two runs image by image). `reuse` records a finished twin's outcome instead.
"""

from __future__ import annotations

import logging
import os
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.environments import SLURMEnvironment

from fmnist_lab.data import StepBudget, TaskDataModule
from fmnist_lab.faults import AtomicCheckpointIO, checkpoint_to_resume, hold_gpu
from fmnist_lab.models import init_weights, model_name, num_params
from fmnist_lab.module import Classifier
from fmnist_lab.pruning import trial_pruning
from fmnist_lab.results import (
    PREDICTIONS_FILE,
    find_trained_twin,
    record,
    run_key,
    write_results,
)
from fmnist_lab.tensorboard_logging import CURVES, EpochLogger, log_hparams

log = logging.getLogger("fmnist_lab")


class History(pl.Callback):
    """Metrics and timings at every validation, kept in checkpoints so a resumed run keeps
    its past: per epoch, or under a step budget per validation point, keyed by the step
    with the (fractional) epoch beside it."""

    def __init__(self, by_step: bool = False) -> None:
        self.by_step = by_step
        self.epochs: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.val_seconds = 0.0
        self.train_images = 0
        self.resumed_after: int | None = None  # epochs (or steps) a checkpoint brought back
        self.carried_seconds = 0.0  # their train and validate seconds, from earlier sittings

    def _now(self, module: pl.LightningModule) -> float:
        if module.device.type == "cuda":  # time the GPU's work, not the launch queue
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = self._train_end = self._now(module)
        self._images = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch.labels)  # a BatchGroup

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._train_end = self._now(module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        end = self._now(module)
        train_end = self._train_end if self._train_end > self._start else end
        self.train_seconds += train_end - self._start
        self.val_seconds += end - train_end
        self.train_images += self._images
        metrics = trainer.callback_metrics
        if self.by_step:
            step = trainer.global_step
            entry = {"step": step,
                     "epoch": round(step / trainer.datamodule.steps_per_epoch, 4)}
        else:
            entry = {"epoch": trainer.current_epoch + 1}
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            if key in metrics:
                entry[key.replace("/", "_")] = float(metrics[key])
        entry["seconds"] = round(end - self._start, 3)
        # The wall clock too: a study's wall time is the union of its epochs (report.py).
        entry["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.epochs.append(entry)

    @property
    def images_per_second(self) -> float | None:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "train_seconds": self.train_seconds,
                "val_seconds": self.val_seconds, "train_images": self.train_images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = list(state["epochs"])
        self.train_seconds = state["train_seconds"]
        self.val_seconds = state.get("val_seconds", 0.0)  # checkpoints of older code lack it
        self.train_images = state["train_images"]
        self.resumed_after = (self.epochs[-1]["step"] if self.by_step and self.epochs
                              else len(self.epochs))
        self.carried_seconds = self.train_seconds + self.val_seconds


def build_trainer(cfg: DictConfig, out_dir: Path, callbacks: list[pl.Callback],
                  **trainer_args: Any) -> pl.Trainer:
    """A run's Trainer: cfg.trainer (and `trainer_args` over it), TensorBoard events in
    out_dir/tensorboard, and `last.ckpt` in out_dir/checkpoints after every epoch, which is
    what an interrupted run resumes from. (With save_top_k=0 Lightning writes last.ckpt
    only when fit ends, too late to resume; save_top_k=1 without a monitor keeps just the
    newest epoch file beside it.)"""
    # The event files sit in the run folder itself: TensorBoard lists a run by its folder's
    # path, so the run's name is the whole name (not ".../tensorboard").
    logger = EpochLogger(save_dir=str(out_dir), name="", version="",
                         default_hp_metric=False)
    logger.experiment.add_custom_scalars(CURVES)  # first, so a run in progress has it too
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True,
                                 save_top_k=1, every_n_epochs=1)
    # Validation ends each of Lightning's epochs: whole epochs, or a step budget's intervals
    # (StepBudget), whose loader is built anew for each (their group counts differ).
    # trainer.val_check_interval counts steps here, never Lightning's batches (groups).
    budget_args: dict[str, Any] = {"val_check_interval": None}
    budget = StepBudget.of(cfg.trainer)
    if budget:
        budget_args.update(max_epochs=budget.intervals, max_steps=-1,
                           reload_dataloaders_every_n_epochs=1)
        logger.step_of = lambda: trainer.global_step
    trainer = pl.Trainer(**{**cfg.trainer, **budget_args, **trainer_args}, logger=logger,
                         callbacks=[checkpoint, *callbacks],
                         plugins=[AtomicCheckpointIO(), *_slurm_environment()])
    return trainer


def _slurm_environment() -> list[SLURMEnvironment]:
    """In a SLURM job, Lightning's SLURM environment without its own requeue: a job's requeue
    is submitit's (hydra/launcher=slurm: checkpoint, requeue, resume from last.ckpt), and
    Lightning's (an hpc checkpoint and `scontrol requeue` on SIGUSR1) would be a second one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # detect() also hints at srun where it is not used
        in_job = SLURMEnvironment.detect()
    return [SLURMEnvironment(auto_requeue=False)] if in_job else []


def build_datamodule(cfg: DictConfig) -> TaskDataModule:
    return TaskDataModule(**cfg.data, seed=cfg.seed, augment=instantiate(cfg.transforms),
                          budget=StepBudget.of(cfg.trainer))


def build_module(cfg: DictConfig, num_classes: int = 10) -> Classifier:
    """The network with `num_classes` outputs, initialised from `seed` alone: every fold and
    resume starts the same."""
    pl.seed_everything(cfg.seed, verbose=False)
    net = init_weights(instantiate(cfg.model, num_classes=num_classes), cfg.init.scheme)
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None  # scheduler=none: {}
    return Classifier(net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
                      label_smoothing=cfg.loss.label_smoothing,
                      divergence_check_every=cfg.divergence_check_every,
                      channels_last=cfg.data.channels_last, compile=cfg.compile)


@contextmanager
def _gpu_of_its_own(cfg: DictConfig) -> Iterator[dict[str, Any]]:
    """Trainer arguments that put the run on a GPU no other run here holds, where there are
    several and it asks for one (trainer.devices=1, the default): {"devices": [i]}; else {}."""
    wants_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    count = torch.cuda.device_count() if wants_gpu else 0
    if count < 2 or cfg.trainer.devices != 1:
        yield {}
        return
    with hold_gpu(count) as index:
        yield {"devices": [index]}


def machine(device: torch.device) -> dict[str, Any]:
    """What a run or a benchmark ran on: the study's wall time means little without it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"device": device.type, "cpu": cpu, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def train(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None,
          choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit, test and record the run in `out_dir`; returns its results.json record.

    `choices` are Hydra's config group choices (`{"model": "three_fc", ...}`), recorded so
    that readers name a run's groups as the user did.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.num_classes)

    resume_from = checkpoint_to_resume(out_dir / "checkpoints")
    if resume_from:
        log.info("resuming from %s", resume_from)

    by_step = StepBudget.of(cfg.trainer) is not None
    history = History(by_step)
    pruning = trial_pruning(by_step)  # in an optuna search: report, stop when pruned
    with _gpu_of_its_own(cfg) as device_args:
        trainer = build_trainer(cfg, out_dir, [history, *filter(None, [pruning])], **device_args)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        pruned_at = pruning.pruned_at if pruning else None
        completed = module.diverged_epoch is None and pruned_at is None
        test: dict[str, float] = {}
        test_started = time.perf_counter()
        if completed:
            if module.predicted("val") is None:  # resumed after its last epoch
                trainer.validate(module, datamodule=datamodule, verbose=False)
            test = {k: float(v) for k, v in trainer.test(module, datamodule=datamodule,
                                                          verbose=False)[0].items()}
            write_predictions(out_dir / PREDICTIONS_FILE, module, datamodule)
        test_seconds = time.perf_counter() - test_started
        device = trainer.strategy.root_device
    config = OmegaConf.to_container(cfg, resolve=True)
    # A resumed run's total adds its earlier sittings' epochs, as its train and validate do.
    total = time.perf_counter() - started + history.carried_seconds
    spent = {"data": datamodule.prepare_seconds, "train": history.train_seconds,
             "validate": history.val_seconds, "test": test_seconds}
    # Where it diverged, was pruned or resumed: in epochs, or in steps under a step budget.
    unit = "step" if by_step else "epoch"
    outcome = {
        "model": (choices or {}).get("model") or model_name(cfg.model),
        "num_params": num_params(module.net),
        "num_classes": datamodule.num_classes,
        f"diverged_{unit}": module.diverged_step if by_step else module.diverged_epoch,
        **({f"pruned_{unit}": pruned_at} if pruned_at else {}),
        **({f"resumed_after_{unit}": history.resumed_after} if history.resumed_after else {}),
        "history": history.epochs,
        "test_loss": test.get("test/loss"),
        "test_acc": test.get("test/acc"),
        "device": device.type,
        "machine": machine(device),
        "train_images_per_second": history.images_per_second,
        "train_images": datamodule.num_images("train"),
        "val_images": datamodule.num_images("val"),
        "test_images": datamodule.num_images("test"),
        "predictions": PREDICTIONS_FILE if completed else None,
        # The run's seconds by phase; "other" is the rest (building the trainer and network,
        # checkpoints, Lightning's hooks). A resumed run counts its earlier sittings' train
        # and validate seconds, not their other costs.
        "seconds": {**{k: round(v, 3) for k, v in spent.items()},
                    "other": round(total - sum(spent.values()), 3), "total": round(total, 3)},
    }
    status = "pruned" if pruned_at else "completed" if completed else "diverged"
    result = record(status, config, overrides, choices, **outcome)
    log_hparams(trainer.logger.experiment, result)
    return write_results(out_dir, result)


def write_predictions(path: Path, module: Classifier, datamodule: TaskDataModule) -> None:
    """The class predicted for every validation (last epoch) and test image beside the true
    one, as small integers, compressed; written beside its final name, then renamed."""
    dtype = np.uint8 if datamodule.num_classes <= 256 else np.int32
    arrays = {}
    for split in ("val", "test"):
        arrays[f"{split}_predicted"] = module.predicted(split).numpy().astype(dtype)
        arrays[f"{split}_label"] = datamodule.labels(split).cpu().numpy().astype(dtype)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def reuse(cfg: DictConfig, out_dir: Path, root: Path, overrides: list[str],
          choices: dict[str, str]) -> dict[str, Any] | None:
    """Where a run of the same config and seed finished below `root`, record its outcome
    here as this run's (`reused_from` names it) instead of training again; else None."""
    config = OmegaConf.to_container(cfg, resolve=True)
    twin = find_trained_twin(root, run_key(config), besides=out_dir)
    if twin is None:
        return None
    folder, twin_result = twin
    outcome = {k: v for k, v in twin_result.items()
               if k not in ("status", "overrides", "choices", "config", "run_key", "seed")}
    outcome["reused_from"] = os.path.relpath(folder, out_dir)
    if twin_result.get("predictions"):  # read where the twin wrote them
        outcome["predictions"] = os.path.join(outcome["reused_from"], twin_result["predictions"])
    print(f"reusing {folder}: the same config and seed already ran there")
    return write_results(out_dir, record(twin_result["status"], config, overrides, choices,
                                         **outcome))


def objective(result: dict[str, Any]) -> float:
    """A run's last validation accuracy: what optuna maximises; 0 for a run that did not
    complete (a pruned run's trial is told PRUNED instead)."""
    history = result.get("history") or [{}]
    value = history[-1].get("val_acc")
    return float(value) if result["status"] == "completed" and value is not None else 0.0
