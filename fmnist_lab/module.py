"""One LightningModule for every network: cross-entropy, the configured optimizer and
schedule (conf/optimizer, conf/scheduler; SGD with momentum by default), accuracy.

A training batch from Lightning is a group of batches (`data.group_batches`; any iterable of
(x, y) will do), each its own optimizer step, with manual optimization: Lightning's loop
around a batch costs as much as the MLP's whole step on a CPU, and a group pays it once
(docs/performance.md has the numbers). Inside a group, backward and step are plain PyTorch
(with Lightning's GradScaler under 16-mixed; Lightning autocasts the whole training step),
and `counted_step` counts each step in `global_step` as Lightning does. The price:
callbacks' backward and optimizer-step hooks do not fire, and Trainer(gradient_clip_val,
accumulate_grad_batches) do not apply (the config check rejects them).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, RichProgressBar
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import Metric


def quiet_lightning() -> None:
    """Mute Lightning's start-up chatter (accelerator lines, tips, a deprecation inside
    Lightning itself, a logging-interval warning for short epochs, srun's hint): it buries
    our output."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # Every run on a machine with SLURM's tools: Lightning suggests srun for multi-process
    # jobs, which a run here never is (one process; a SLURM job's runs start through srun).
    warnings.filterwarnings("ignore", message=".*The `srun` command is available.*")


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


def counted_step(trainer: pl.Trainer, lightning_optimizer: LightningOptimizer,
                 loss: torch.Tensor, scaler: torch.amp.GradScaler | None = None) -> None:
    """`optimizer_step` on the optimizer Lightning wraps, counted in `trainer.global_step`
    (and so `max_steps`) as `LightningOptimizer.step` counts it.

    `LightningOptimizer.step` would also run every callback's optimizer hooks, a cost per
    step; the count lives in two private hooks that Lightning 2.6 calls around the step,
    called here instead. Where a Lightning release moved them, this stops with that said,
    rather than train with the step count stuck.
    """
    before = getattr(lightning_optimizer, "_on_before_step", None)
    after = getattr(lightning_optimizer, "_on_after_step", None)
    steps = trainer.global_step
    if callable(before) and callable(after):
        before()
        optimizer_step(loss, lightning_optimizer.optimizer, scaler)
        after()
        if trainer.global_step == steps + 1:
            return
    raise RuntimeError(
        f"pytorch_lightning {pl.__version__} no longer counts optimizer steps through "
        "LightningOptimizer._on_before_step/_on_after_step, which fmnist_lab.module."
        "counted_step uses (written for 2.6): install pytorch-lightning<2.7 or adapt it")


class EpochMean(Metric):
    """`total / count` over an epoch from sums handed in per batch or per group.

    torchmetrics' MeanMetric either drops NaNs (a diverged epoch must show NaN), checking
    for them with a host sync on every update, or, with nan_strategy="disable", ignores
    its weights (torchmetrics 1.9), so a short last batch would count as a full one.
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
        self.diverged_epoch: int | None = None  # Lightning's epoch (1, 2, ...)
        self.diverged_step: int | None = None  # the optimizer step whose loss was not finite
        self._logged_epoch: int | None = None
        # Sums of losses and of correct predictions, and their image counts.
        self.train_loss, self.train_acc = EpochMean(), EpochMean()
        self.val_loss, self.val_acc = EpochMean(), EpochMean()
        self.test_loss, self.test_acc = EpochMean(), EpochMean()
        # The predicted class of every image of the last validation and of the test pass, in
        # batch order: what pairs two runs' accuracies image by image (fmnist_lab.report).
        self._predicted: dict[str, list[torch.Tensor]] = {"val": [], "test": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        # One fused kernel for all parameters instead of a few small ops per tensor: a
        # faster optimizer step on the CPU, fewer launches on a GPU.
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
        """Optimizer steps of the whole fit: a step budget's steps (the data module's,
        which cuts Lightning's epochs at its validation points), else training batches a
        epoch x max_epochs, or max_steps when that comes first. (Lightning's
        estimated_stepping_batches counts its batches, here groups of batches.)"""
        datamodule = self.trainer.datamodule
        if getattr(datamodule, "budget", None) is not None:
            return datamodule.budget.steps
        total = datamodule.steps_per_epoch * self.trainer.max_epochs
        max_steps = self.trainer.max_steps
        return min(total, max_steps) if max_steps >= 0 else total

    def configure_callbacks(self) -> list[Callback]:
        # Lightning's Rich bar redraws after every training batch (a group here), up to 100
        # times a second, from a thread that holds the GIL meanwhile. Twice a second will do.
        if type(self.trainer.progress_bar_callback) is RichProgressBar:
            return [RichProgressBar(refresh_rate=2)]
        return []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # Returning -1 ends the epoch; with should_stop set, it ends the fit.
        return -1 if self.diverged_epoch is not None else None

    def training_step(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_idx: int
    ) -> None:
        lightning_optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        # Lightning's MixedPrecision plugin holds a GradScaler for 16-mixed (and applies
        # autocast around this whole method for 16- and bf16-mixed).
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        max_steps, step = self.trainer.max_steps, self.trainer.global_step
        # Per step only what the step needs; the training metrics are computed once a group
        # from what is kept here (no copies: the losses and logits are detached).
        weighted_losses, outputs, labels = [], [], []
        for x, y in batches:
            if step == max_steps:  # max_steps counts optimizer steps, not groups
                break
            logits = self.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            weighted_losses.append(loss.detach() * len(y))
            outputs.append(logits.detach())
            labels.append(y)
            # The check waits for the device, so not every step; a NaN in between still
            # reaches the epoch's mean loss, which on_train_epoch_end checks.
            if step % self.divergence_check_every == 0 and not torch.isfinite(loss):
                self._mark_diverged(step + 1)
                break
            # Not manual_backward: it runs every callback's backward hook.
            counted_step(self.trainer, lightning_optimizer, loss, scaler)
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
            self._mark_diverged(self.trainer.global_step)

    def _mark_diverged(self, step: int) -> None:
        """Stop: the loss of optimizer step `step` (1, 2, ..., or the last one of an epoch
        whose mean loss is not finite) was NaN or infinite."""
        if self.diverged_epoch is None:
            self.diverged_epoch = self.current_epoch + 1
            self.diverged_step = step
        self.trainer.should_stop = True

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                  loss_metric: EpochMean, acc_metric: EpochMean, stage: str) -> None:
        x, y = batch
        logits = self(x)
        predicted = logits.argmax(dim=1)
        if batch_idx == 0:
            self._predicted[stage] = []
        self._predicted[stage].append(predicted)
        loss_metric.update(F.cross_entropy(logits, y, reduction="sum"), len(y))
        acc_metric.update((predicted == y).sum(), len(y))
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_loss, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_loss, self.test_acc, "test")

    def predicted(self, stage: str) -> torch.Tensor | None:
        """The class predicted for every image of the last `stage` ("val", "test") pass, in
        the order the data module serves them; None before any."""
        batches = self._predicted[stage]
        return torch.cat(batches).cpu() if batches else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diverged_epoch"] = self.diverged_epoch
        checkpoint["diverged_step"] = self.diverged_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.diverged_epoch = checkpoint.get("diverged_epoch")
        self.diverged_step = checkpoint.get("diverged_step")
