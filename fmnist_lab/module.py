"""One LightningModule for every network: cross-entropy, SGD with momentum, accuracy.

Metrics accumulate on the device (torchmetrics) and are read once per epoch, so a training
step never waits for the host. Divergence is the one thing checked during the epoch, every
`divergence_check_every` steps: a non-finite loss stops the run and marks it diverged.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fmnist_lab.data import NUM_CLASSES


class Classifier(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        divergence_check_every: int = 20,
    ) -> None:
        super().__init__()
        self.net = net
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.divergence_check_every = divergence_check_every
        self.diverged_epoch: int | None = None
        # 'disable': NaNs must reach the epoch mean (and the divergence check), and the
        # default NaN filtering would cost a host sync per step.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.train_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # Returning -1 ends the epoch; with should_stop set, it ends the fit.
        return -1 if self.diverged_epoch is not None else None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if batch_idx % self.divergence_check_every == 0 and not torch.isfinite(loss):
            self._mark_diverged()
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

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
