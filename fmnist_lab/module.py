"""One LightningModule for every network: cross-entropy, the configured optimizer and
schedule (conf/optimizer, conf/scheduler; SGD with momentum by default), accuracy.

Speed matters here because a training step of the MLP takes about 1.5 ms on two CPU cores
(less on a GPU), so per-step bookkeeping shows (issue 6, `python -m fmnist_lab.bench`):

- A training batch from Lightning is a group of batches (`data.group_batches`; any iterable
  of (x, y) will do), each its own optimizer step, with manual optimization. Lightning's
  loop around a batch costs about 1 ms on a CPU, as much as the MLP's step; a group of 32
  pays it once. Inside the group, backward and step are plain PyTorch (with Lightning's
  GradScaler under 16-mixed; Lightning autocasts the whole training step), and each step
  is counted in `global_step` as Lightning counts it. The price: callbacks' backward and
  optimizer-step hooks do not fire, and Trainer(gradient_clip_val,
  accumulate_grad_batches) do not apply (the config check rejects them).
- Training metrics: each step keeps its loss and logits (detached, no copy); the group's
  loss sum and correct count are computed once a group on the device and added to two
  metric objects. `self.log` of a metric object costs 1-2 ms a call in Lightning 2.6 (it
  moves the metric to the device every time), so it is called once an epoch: Lightning
  keeps the logged objects and computes them at the epoch's end. Nothing in a training step waits
  for the host except the divergence check.
- Divergence is checked every `divergence_check_every` optimizer steps (one host sync): a
  non-finite loss stops the run and marks it diverged.
- Lightning's progress bar redraws and reads the metrics on every step; it is replaced by
  one that redraws at most twice a second.
- Switches for the GPU: `channels_last` (the network's weights; the data module converts
  the inputs) and `compile` (torch.compile of the network's forward, in place, so the
  checkpoint keys stay `net.*`). Mixed precision is Lightning's `trainer.precision`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from fmnist_lab.data import NUM_CLASSES


def quiet_lightning() -> None:
    """Mute Lightning's start-up chatter (accelerator lines, tips, a deprecation inside
    Lightning itself, a logging-interval warning for short epochs): it buries our output."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Zero the gradients, backward, step; through the GradScaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


class EpochMean(Metric):
    """`total / count` over an epoch from per-batch sums.

    torchmetrics' MeanMetric and MulticlassAccuracy check, cast and reshape their inputs on
    every call (~210 us a step together on the CPU, 10% of the MLP's step); these sums cost
    a quarter of that.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, total: torch.Tensor, count: int) -> None:
        self.total += total
        self.count += count

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class _Throttled:
    """Lightning's progress bars redraw and gather the metrics after every training batch:
    ~70 us a step, 3% of the MLP's step on a CPU. This one skips batches to redraw at most
    every `interval` seconds (and at the epoch's last batch)."""

    interval = 0.5
    _last_draw = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last_draw >= self.interval or batch_idx + 1 == self.total_train_batches:
            self._last_draw = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class ThrottledTQDMProgressBar(_Throttled, TQDMProgressBar):
    pass


class ThrottledRichProgressBar(_Throttled, RichProgressBar):
    def __init__(self) -> None:
        # Rich also redraws from a thread, 100 times a second by default: that thread took
        # ~10% of the MLP's training speed (GIL and a CPU core) on a 2-core machine.
        super().__init__(refresh_rate=round(1 / self.interval))


# Lightning's default bar (Rich when `rich` is installed, else tqdm) -> its throttled twin.
THROTTLED = {TQDMProgressBar: ThrottledTQDMProgressBar, RichProgressBar: ThrottledRichProgressBar}


# The seed's optimizer, what conf/optimizer/sgd.yaml builds.
SEED_SGD = partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=0.0)


class Classifier(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] = SEED_SGD,
        scheduler: Callable[..., LRScheduler] | None = None,
        label_smoothing: float = 0.0,
        divergence_check_every: int = 20,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the training step runs a group of steps
        if channels_last:  # conv weights in NHWC, matching the data module's NHWC inputs
            net = net.to(memory_format=torch.channels_last)
        if compile:
            # Compiles the network's __call__ in place: still the same module, so the
            # checkpoint keys stay `net.*` and any run's checkpoint loads into any other.
            net.compile()
        self.net = net
        # Partials from Hydra's instantiate (conf/optimizer, conf/scheduler): the parameters
        # and the run's length are only known in configure_optimizers.
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        self.label_smoothing = label_smoothing
        self.divergence_check_every = divergence_check_every
        self.diverged_epoch: int | None = None
        self._logged_epoch: int | None = None
        self.train_loss = EpochMean()
        self.train_acc = EpochMean()
        # Evaluation batches are few and large (data.eval_batch_size): torchmetrics' cost
        # does not show there. 'disable': NaNs must reach the epoch mean.
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        # One fused kernel for all parameters instead of a few small ops per tensor: the
        # optimizer step takes half the time on the CPU (and fewer launches on a GPU).
        fused = all(p.device.type in ("cpu", "cuda") for p in self.parameters())
        optimizer = self.make_optimizer(self.parameters(), fused=fused)
        if self.make_scheduler is None:
            return optimizer
        # Manual optimization: Lightning keeps the scheduler (and its state in checkpoints,
        # so a resumed run continues the schedule) but training_step steps it.
        scheduler = self.make_scheduler(optimizer, total_steps=self.total_optimizer_steps())
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole fit: training batches a epoch x max_epochs, or
        max_steps when that comes first. (Lightning's estimated_stepping_batches counts
        its batches, here groups of data.group_batches batches.)"""
        datamodule = self.trainer.datamodule
        per_epoch = math.ceil(datamodule.num_images("train") / datamodule.batch_size)
        total = per_epoch * self.trainer.max_epochs
        max_steps = self.trainer.max_steps
        return min(total, max_steps) if max_steps >= 0 else total

    def configure_callbacks(self) -> list[Callback]:
        # Only Lightning's own default bar is replaced; a bar a user passed in stays.
        throttled = THROTTLED.get(type(self.trainer.progress_bar_callback))
        return [throttled()] if throttled else []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # Returning -1 ends the epoch; with should_stop set, it ends the fit.
        return -1 if self.diverged_epoch is not None else None

    def training_step(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_idx: int
    ) -> None:
        lightning_optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        optimizer = lightning_optimizer.optimizer
        # Lightning's MixedPrecision plugin holds a GradScaler for 16-mixed (and applies
        # autocast around this whole method for 16- and bf16-mixed).
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        max_steps, step = self.trainer.max_steps, self.trainer.global_step
        # Per step only what the step needs; the training metrics are computed once a
        # group from what is kept here (a few small ops a step were 3% of the MLP's step).
        weighted_losses, outputs, labels = [], [], []
        for x, y in batches:
            if step == max_steps:  # max_steps counts optimizer steps, not groups
                break
            logits = self.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            weighted_losses.append(loss.detach() * len(y))
            outputs.append(logits.detach())
            labels.append(y)
            if step % self.divergence_check_every == 0 and not torch.isfinite(loss):
                self._mark_diverged()
                break
            # Plain backward and step, not manual_backward and the wrapped optimizer's
            # step: those call every callback's backward and optimizer hooks, ~0.2 ms a
            # step on a CPU. The two calls around them count the step (global_step).
            lightning_optimizer._on_before_step()
            optimizer_step(loss, optimizer, scaler)
            lightning_optimizer._on_after_step()
            if scheduler is not None:  # every optimizer step, as the schedule counts them
                scheduler.step()
            step += 1
        if labels:
            with torch.no_grad():
                y = torch.cat(labels)
                self.train_loss.update(torch.stack(weighted_losses).sum(), len(y))
                self.train_acc.update((torch.cat(outputs).argmax(dim=1) == y).sum(), len(y))
        if self._logged_epoch != self.current_epoch:
            # Lightning keeps the metric objects logged here and computes them (and resets
            # them) at the epoch's end, so logging once an epoch gives the whole epoch.
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
            self._logged_epoch = self.current_epoch

    def on_train_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("train/loss")
        if loss is not None and not torch.isfinite(loss):
            self._mark_diverged()

    def _mark_diverged(self) -> None:
        if self.diverged_epoch is None:
            self.diverged_epoch = self.current_epoch + 1
        self.trainer.should_stop = True

    def _evaluate(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy, stage: str):
        x, y = batch
        logits = self(x)
        loss_metric(F.cross_entropy(logits, y), weight=len(y))
        acc_metric(logits, y)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_acc, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diverged_epoch"] = self.diverged_epoch

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.diverged_epoch = checkpoint.get("diverged_epoch")
