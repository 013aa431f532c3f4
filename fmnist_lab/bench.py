"""`python -m fmnist_lab.bench [overrides]`: how fast each network trains, four ways.

(a) lightning: this project's training, a real `pl.Trainer.fit` of `build_module` and
    `build_datamodule` with what `fmnist_lab.train` attaches to a run (TensorBoard logger,
    last-checkpoint callback, History, the progress bar as configured). Only validation is
    off: it is not training, and by default the timed steps end inside the first epoch.
(a0) bare: plain Lightning: a minimal LightningModule (the same network, cross-entropy and
    optimizer, no metrics) taking one batch per training step through the same Trainer and
    data module, with no logger, checkpoint or progress bar: what (a)'s groups of
    `data.group_batches` batches save.
(b) raw: a plain PyTorch loop over the same device tensors with the same data path (index,
    float, augment, normalise), network, optimizer and precision: the compute floor.
(c) seed: the seed's pipeline: a Dataset serving one PIL image at a time through the
    per-image transforms (Compose([ToTensor(), Normalize((0.5,), (0.5,))]) for `standard`),
    a shuffling DataLoader with `bench.seed_workers` workers, an eager fp32 network, plain
    SGD, and `loss.item()` every step, as the seed's running-loss bookkeeping did.

The pipelines are timed in `bench.repeats` rounds; a round times one window of each, of
at most `bench.steps` training steps (or `bench.max_seconds`) after `bench.warmup` steps.
The table gives each pipeline's median window and, for the ratios, the median of the
rounds' ratios: on a shared machine the speed drifts by tens of percent over a minute, and
windows seconds apart see the same drift. On a GPU the clock is read after a synchronize,
at window edges only. The table is printed, and `bench.json`
(machine, versions, settings, every window) is written to the run folder.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fmnist_lab.data import TensorBatches
from fmnist_lab.models import init_weights, model_config, model_names, num_params, study_models
from fmnist_lab.module import Classifier, optimizer_step, quiet_lightning
from fmnist_lab.results import write_json_atomic
from fmnist_lab.run import History, build_datamodule, build_module, build_trainer, machine
from fmnist_lab.schema import BENCH_METHODS, ConfigError
from fmnist_lab.sources import DataError

log = logging.getLogger("fmnist_lab")


RESULTS_FILE = "bench.json"
# The targets on the CPU: the MLP at least 10x the seed-style pipeline, and every network
# at least 0.9x the raw loop (framework overhead under 10%).
MIN_OVER_SEED = {"three_fc": 10.0}
MIN_OVER_RAW = 0.9


class Window:
    """Steady-state throughput: one window of at most `steps` steps after `warmup` steps.

    The window also closes once `max_seconds` have passed, so a slow network on a CPU is
    timed in bounded time. `step()` is called after every training step (or group).
    """

    def __init__(self, warmup: int, steps: int, max_seconds: float,
                 device: torch.device) -> None:
        self.warmup, self.steps = warmup, steps
        self.max_seconds, self.device = max_seconds, device
        self.rate: float | None = None
        self._warm = 0
        self._start: float | None = None
        self._images = self._steps = 0

    def _now(self) -> float:
        if self.device.type == "cuda":  # time the GPU's work, not the launch queue
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self, images: int, steps: int = 1) -> bool:
        """Count `steps` finished training steps of `images` images in all; True once the
        window is timed. (Lightning's batches are groups of steps: the window's edges fall
        between groups.)"""
        if self._start is None:
            self._warm += steps
            if self._warm >= self.warmup:
                self._start = self._now()
            return False
        self._images += images
        self._steps += steps
        if self._steps >= self.steps or time.perf_counter() - self._start >= self.max_seconds:
            self.rate = self._images / (self._now() - self._start)
        return self.rate is not None


class WindowCallback(pl.Callback):
    """Feeds Lightning's training batches to a `Window`; stops the fit once it is timed."""

    def __init__(self, window: Window) -> None:
        self.window = window

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.window.step(len(batch.labels), len(batch)):  # a BatchGroup
            trainer.should_stop = True


# ---------------------------------------------------------------------------- (a) (b) (c)


def time_lightning(cfg: DictConfig, window: Window, workdir: Path) -> None:
    """(a) A training run as `fmnist_lab.run.train` sets it up, stopped once timed."""
    datamodule, module = build_datamodule(cfg), build_module(cfg)
    # Runs until WindowCallback stops it.
    trainer = build_trainer(cfg, workdir, [History(), WindowCallback(window)],
                            max_epochs=-1, max_steps=-1, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)


class BareModule(pl.LightningModule):
    """Plain Lightning: the run's network, cross-entropy and optimizer, one batch per
    training step with automatic optimization, nothing else."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor],
                      batch_idx: int) -> torch.Tensor:
        (x, y), = batch  # a BatchGroup of one batch
        return F.cross_entropy(self.classifier.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.classifier.configure_optimizers()


def time_bare(cfg: DictConfig, window: Window) -> None:
    """(a0) A plain LightningModule through the same Trainer and data module (one batch at
    a time), with no metrics, logger, checkpoint or progress bar: what pl.Trainer's loop
    costs a project that runs one batch per training step."""
    cfg = copy.deepcopy(cfg)
    cfg.data.group_batches = 1
    warnings.filterwarnings("ignore", message=".*no `validation_step`.*")  # none on purpose
    datamodule, module = build_datamodule(cfg), BareModule(build_module(cfg))
    trainer_args = {**cfg.trainer, "max_epochs": -1, "max_steps": -1,
                    "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "enable_checkpointing": False}
    trainer = pl.Trainer(**trainer_args, logger=False, callbacks=[WindowCallback(window)])
    trainer.fit(module, datamodule=datamodule)


def resolve_device(accelerator: str) -> torch.device:
    """The one device `trainer.accelerator` stands for, as Lightning picks it."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def mixed_precision(
    precision: Any, device: torch.device
) -> tuple[AbstractContextManager, torch.amp.GradScaler | None]:
    """(autocast context, GradScaler or None) doing what Lightning's `precision` does, for
    the three values the config check allows."""
    name = str(precision)
    if name == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16), None
    if name == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16), torch.amp.GradScaler(device.type)
    return nullcontext(), None


def time_raw(cfg: DictConfig, window: Window, device: torch.device) -> None:
    """(b) forward, loss, backward, step over the data module's tensors, nothing else."""
    datamodule, module = build_datamodule(cfg), build_module(cfg)
    datamodule.setup("fit")  # without a trainer the tensors stay on the CPU: moved here
    split = datamodule.train_dataloader()
    batches = TensorBatches(split.images.to(device), split.labels.to(device),
                            datamodule.batch_size,
                            shuffle_seed=itertools.count(cfg.seed).__next__)
    net = module.to(device).train().net
    optimizer = module.configure_optimizers()
    autocast, scaler = mixed_precision(cfg.trainer.precision, device)
    while True:
        for images, labels in batches:
            x = datamodule.prepare(images, train=True)
            with autocast:
                loss = F.cross_entropy(net(x), labels)
            optimizer_step(loss, optimizer, scaler)
            if window.step(len(labels)):
                return


class SeedStyleDataset(Dataset):
    """What torchvision.datasets.FashionMNIST serves: one PIL image per item, transformed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: T.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i].numpy())  # 28x28 uint8: mode "L"
        return self.transform(image), int(self.labels[i])


def transforms_name(transforms: DictConfig) -> str:
    name = transforms._target_.rsplit(".", 1)[-1]
    return "standard" if name == "Identity" else name


def seed_transform(transforms: DictConfig) -> T.Compose:
    """The seed's per-image transforms: the augmentation (torchvision's class of the same
    name and arguments as the configured one), then ToTensor and Normalize(0.5, 0.5)."""
    steps = []
    target = transforms_name(transforms)
    if target != "standard":
        args = {k: v for k, v in transforms.items() if k != "_target_"}
        if "interpolation" in args:
            args["interpolation"] = T.InterpolationMode(args["interpolation"])
        steps.append(getattr(T, target)(**args))
    return T.Compose([*steps, T.ToTensor(), T.Normalize((0.5,), (0.5,))])


def time_seed(cfg: DictConfig, window: Window, device: torch.device) -> None:
    """(c) The seed's training loop over a DataLoader of PIL images."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    split = datamodule.train_dataloader()
    dataset = SeedStyleDataset(split.images.cpu(), split.labels.cpu(),
                               seed_transform(cfg.transforms))
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True,
                        num_workers=cfg.bench.seed_workers)
    pl.seed_everything(cfg.seed, verbose=False)
    net = init_weights(instantiate(cfg.model), cfg.init.scheme).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr,
                                momentum=cfg.optimizer.momentum)
    criterion = nn.CrossEntropyLoss()
    running_loss = 0.0
    while True:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if window.step(len(labels)):
                return


# ---------------------------------------------------------------------------- the bench


def bench_models(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """bench.models, else the network named with `model=`, else the four study networks."""
    available = model_names()
    models = cfg.bench.models
    if models is None:
        named = [o.split("=", 1)[1] for o in overrides if o.startswith("model=")]
        models = named or study_models()
    elif not OmegaConf.is_list(models):
        models = [models]
    for name in models:
        if name not in available:
            raise ConfigError("bench.models", name, f"names among {', '.join(available)}")
    return list(models)


def with_model(cfg: DictConfig, name: str) -> DictConfig:
    run_cfg = copy.deepcopy(cfg)
    with open_dict(run_cfg):
        run_cfg.model = model_config(name)
    return run_cfg


def paired_ratio(rates: dict[str, list[float]], a: str, b: str) -> float | None:
    """Median over rounds of a's rate over b's in the same round."""
    if a not in rates or b not in rates:
        return None
    return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CPU targets, checked against the measured ratios."""
    checks = []
    for r in results:
        low = MIN_OVER_SEED.get(r["model"])
        if low is not None and r["lightning_over_seed"] is not None:
            checks.append({"target": f"{r['model']}: lightning >= {low:g}x seed-style",
                           "value": r["lightning_over_seed"],
                           "met": r["lightning_over_seed"] >= low})
        if r["lightning_over_raw"] is not None:
            checks.append({"target": f"{r['model']}: lightning >= {MIN_OVER_RAW}x raw",
                           "value": r["lightning_over_raw"],
                           "met": r["lightning_over_raw"] >= MIN_OVER_RAW})
    return checks


def run_bench(cfg: DictConfig, models: list[str], out_dir: Path) -> dict[str, Any]:
    """Time every network with every method; write and return `bench.json`'s content."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    device = resolve_device(cfg.trainer.accelerator)
    b = cfg.bench
    report: dict[str, Any] = {
        "machine": machine(device),
        "settings": {
            "batch_size": cfg.data.batch_size, "precision": str(cfg.trainer.precision),
            "channels_last": cfg.data.channels_last, "compile": cfg.get("compile", False),
            "transforms": transforms_name(cfg.transforms),
            "progress_bar": cfg.trainer.enable_progress_bar, "methods": list(b.methods),
            "warmup": b.warmup, "steps": b.steps, "repeats": b.repeats,
            "max_seconds": b.max_seconds, "seed_workers": b.seed_workers,
        },
        "results": [],
    }
    for name in models:
        run_cfg = with_model(cfg, name)
        methods = [m for m in BENCH_METHODS if m in b.methods]
        rates: dict[str, list[float]] = {m: [] for m in methods}
        # Rounds of one window per method, so each round's ratios compare windows taken
        # seconds apart: on a shared machine the speed drifts more over a minute than
        # within a round.
        for _ in range(b.repeats):
            for method in methods:
                window = Window(b.warmup, b.steps, b.max_seconds, device)
                if method == "lightning":
                    with tempfile.TemporaryDirectory() as workdir:
                        time_lightning(run_cfg, window, Path(workdir))
                elif method == "bare":
                    time_bare(run_cfg, window)
                elif method == "raw":
                    time_raw(run_cfg, window, device)
                else:
                    time_seed(run_cfg, window, device)
                rates[method].append(window.rate)
        row: dict[str, Any] = {"model": name, "num_params": num_params(instantiate(run_cfg.model))}
        for method in BENCH_METHODS:
            row[method] = statistics.median(rates[method]) if method in rates else None
            if method in rates:
                log.info("%s %s: %.0f images/s", name, method, row[method])
        row["lightning_over_seed"] = paired_ratio(rates, "lightning", "seed")
        row["lightning_over_raw"] = paired_ratio(rates, "lightning", "raw")
        row["windows"] = rates
        report["results"].append(row)
    report["machine"]["load_average_after"] = (
        os.getloadavg() if hasattr(os, "getloadavg") else None)
    report["targets"] = targets(report["results"])
    write_json_atomic(out_dir / RESULTS_FILE, report)
    return report


def table(report: dict[str, Any]) -> str:
    """The printed summary: settings, one row per network, the targets."""
    m, s = report["machine"], report["settings"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores"
    lines = [
        f"Training throughput, images/s: batch {s['batch_size']}, median of {s['repeats']} "
        f"rounds of one window per method (up to {s['steps']} steps or {s['max_seconds']:g} s "
        f"after {s['warmup']} warm-up steps); ratios: median of the rounds' ratios",
        f"{m['device']} ({where}; {m['torch_threads']} torch threads), torch {m['torch']}, "
        f"precision {s['precision']}, channels_last {s['channels_last']}, "
        f"compile {s['compile']}, transforms {s['transforms']}",
        "a  = lightning: this project's training (pl.Trainer.fit, data module on the device)",
        "a0 = bare: plain Lightning, one batch per training_step through the same Trainer",
        "b  = raw: plain PyTorch loop over the same device tensors (the compute floor)",
        f"c  = seed: PIL images, per-image ToTensor/Normalize, "
        f"DataLoader(num_workers={s['seed_workers']})",
        "",
        f"{'model':<16}{'params':>10}{'a lightning':>13}{'a0 bare':>9}{'b raw':>9}"
        f"{'c seed':>8}{'a/c':>8}{'a/b':>6}",
    ]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    def times(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in report["results"]:
        lines.append(
            f"{r['model']:<16}{r['num_params']:>10,}{num(r['lightning']):>13}"
            f"{num(r['bare']):>9}{num(r['raw']):>9}{num(r['seed']):>8}"
            f"{times(r['lightning_over_seed'], '.1f') + 'x':>8}"
            f"{times(r['lightning_over_raw'], '.2f'):>6}")
    if report["targets"]:
        lines += ["", "Targets (stated for the CPU):"]
        lines += [f"  {'met    ' if t['met'] else 'NOT met'}  {t['target']} ({t['value']:.2f})"
                  for t in report["targets"]]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    quiet_lightning()
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        report = run_bench(cfg, bench_models(cfg, list(hydra_cfg.overrides.task)), out_dir)
    except (ConfigError, DataError, MisconfigurationException) as e:
        sys.exit(f"error: {e}")
    print(table(report))
    print(f"wrote {out_dir / RESULTS_FILE}")


if __name__ == "__main__":
    main()
