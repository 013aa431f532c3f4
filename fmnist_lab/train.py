"""`python -m fmnist_lab.train [overrides]`: one training run, or a sweep with `-m`.

A run fits one network, tests it on the test set, and writes `results.json` into its Hydra
run folder beside the TensorBoard events and `checkpoints/last.ckpt`. Started again in the
same folder (a sweep re-run with the same `hydra.sweep.dir`), a finished run is skipped and
an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from fmnist_lab.dashboard import CURVES, EpochLogger, log_hparams
from fmnist_lab.data import DataError, FashionMNISTDataModule
from fmnist_lab.models import init_weights, model_name, num_params
from fmnist_lab.module import Classifier, quiet_lightning
from fmnist_lab.results import (
    FINISHED,
    RESULTS_FILE,
    find_results,
    find_trained_twin,
    read_results,
    run_key,
    write_json_atomic,
)
from fmnist_lab.runs import (
    AtomicCheckpointIO,
    Interrupted,
    RunHeld,
    checkpoint_to_resume,
    claim_config,
    epochs_kept,
    hold_gpu,
    hold_run,
    stop_on_signals,
)
from fmnist_lab.schema import ConfigError, check_config
from fmnist_lab.sweep import threads_per_job

log = logging.getLogger("fmnist_lab")


class History(pl.Callback):
    """Per-epoch metrics and timings, kept in checkpoints so a resumed run keeps its past."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0

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
        self.train_images += self._images
        metrics = trainer.callback_metrics
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
                "train_images": self.train_images}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = list(state["epochs"])
        self.train_seconds = state["train_seconds"]
        self.train_images = state["train_images"]


def build_trainer(cfg: DictConfig, out_dir: Path, callbacks: list[pl.Callback],
                  **trainer_args: Any) -> pl.Trainer:
    """A run's Trainer: cfg.trainer (and `trainer_args` over it), TensorBoard events in
    out_dir/tensorboard, and `last.ckpt` in out_dir/checkpoints after every epoch, which is
    what an interrupted run resumes from. (With save_top_k=0 Lightning writes last.ckpt
    only when fit ends, too late to resume; save_top_k=1 without a monitor keeps just the
    newest epoch file beside it.)"""
    logger = EpochLogger(save_dir=str(out_dir), name="tensorboard", version="",
                         default_hp_metric=False)
    logger.experiment.add_custom_scalars(CURVES)  # first, so a run in progress has it too
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True,
                                 save_top_k=1, every_n_epochs=1)
    return pl.Trainer(**{**cfg.trainer, **trainer_args}, logger=logger,
                      callbacks=[checkpoint, *callbacks], plugins=[AtomicCheckpointIO()])


def build_datamodule(cfg: DictConfig) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(**cfg.data, seed=cfg.seed, augment=instantiate(cfg.transforms))


def build_module(cfg: DictConfig) -> Classifier:
    """The network, initialised from `seed` alone: every fold and resume starts the same."""
    pl.seed_everything(cfg.seed, verbose=False)
    net = init_weights(instantiate(cfg.model), cfg.init.scheme)
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
          choices: dict[str, str] | None = None) -> dict:
    """Fit, test and write `results.json` into `out_dir`; returns what it wrote.

    `choices` are Hydra's config group choices (`{"model": "three_fc", ...}`), recorded so
    that readers name a run's groups as the user did.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)

    resume_from = checkpoint_to_resume(out_dir / "checkpoints")
    if resume_from:
        log.info("resuming from %s", resume_from)

    history = History()
    result: dict[str, Any] = {
        "status": "running",
        "model": (choices or {}).get("model") or model_name(cfg.model),
        "num_params": num_params(module.net),
        "seed": cfg.seed,
        "overrides": list(overrides or []),
        "choices": dict(choices or {}),
    }
    with _gpu_of_its_own(cfg) as device_args:
        trainer = build_trainer(cfg, out_dir, [history], **device_args)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)

        test: dict[str, float] = {}
        if module.diverged_epoch is None:
            test = {k: float(v) for k, v in trainer.test(module, datamodule=datamodule,
                                                          verbose=False)[0].items()}
        result.update(
            status="completed" if module.diverged_epoch is None else "diverged",
            diverged_epoch=module.diverged_epoch,
            history=history.epochs,
            test_loss=test.get("test/loss"),
            test_acc=test.get("test/acc"),
            device=trainer.strategy.root_device.type,
            machine=machine(trainer.strategy.root_device),
            train_images_per_second=history.images_per_second,
            train_images=datamodule.num_images("train"),
            val_images=datamodule.num_images("val"),
            test_images=datamodule.num_images("test"),
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    result["run_key"] = run_key(result["config"])
    log_hparams(trainer.logger.experiment, result)
    write_json_atomic(out_dir / RESULTS_FILE, result)
    return result


def _summary(result: dict, out_dir: Path) -> str:
    if result["status"] == "diverged":
        return (f"{result['model']}: diverged in epoch {result['diverged_epoch']} "
                f"(non-finite loss) -> {out_dir}")
    speed = result["train_images_per_second"]
    return (f"{result['model']}: test accuracy {result['test_acc']:.4f}, test loss "
            f"{result['test_loss']:.4f} after {len(result['history'])} epochs "
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
        return _objective(previous)

    if cfg.num_threads is None and threads_per_job(hydra_cfg):
        cfg.num_threads = threads_per_job(hydra_cfg)
    try:
        check_config(cfg)
        reuse_root = cfg.reuse_runs_in or (hydra_cfg.sweep.dir if multirun else None)
        if reuse_root is None:
            result = train(cfg, out_dir, overrides, choices)
        else:
            # Claimed first: a sweep beside this one that is training the same run is waited
            # for, then reused, instead of trained a second time.
            key = run_key(OmegaConf.to_container(cfg, resolve=True))
            with claim_config(Path(reuse_root), key, out_dir):
                result = (reuse(cfg, out_dir, Path(reuse_root), overrides, choices)
                          or train(cfg, out_dir, overrides, choices))
    except (ConfigError, DataError) as e:
        if multirun:
            _record_failure(out_dir, cfg, overrides, choices, e)
        sys.exit(f"error: {e}")
    except Exception as e:
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
    return _objective(result)


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
    done, total = epochs_kept(checkpoints), cfg.trainer.max_epochs
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


def reuse(cfg: DictConfig, out_dir: Path, root: Path, overrides: list[str],
          choices: dict[str, str]) -> dict | None:
    """Where a run of the same config and seed finished below `root`, record its outcome
    here as this run's (`reused_from` names it) instead of training again; else None."""
    config = OmegaConf.to_container(cfg, resolve=True)
    key = run_key(config)
    twin = find_trained_twin(root, key, besides=out_dir)
    if twin is None:
        return None
    folder, result = twin
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "overrides": overrides, "choices": choices, "config": config,
              "run_key": key, "reused_from": os.path.relpath(folder, out_dir)}
    write_json_atomic(out_dir / RESULTS_FILE, result)
    print(f"reusing {folder}: the same config and seed already ran there")
    return result


def _objective(result: dict) -> float:
    history = result.get("history") or [{}]
    value = history[-1].get("val_acc")
    return float(value) if result["status"] == "completed" and value is not None else 0.0


def _record_failure(out_dir: Path, cfg: DictConfig, overrides: list[str],
                    choices: dict[str, str], e: Exception) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / RESULTS_FILE, {
        "status": "failed", "error": f"{type(e).__name__}: {e}", "seed": cfg.get("seed"),
        "overrides": overrides, "choices": choices,
        "config": OmegaConf.to_container(cfg, resolve=False),
    })


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
