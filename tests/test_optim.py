"""Optimizer and scheduler groups, label smoothing: built by Hydra, stepped once per
optimizer step, continued by a resumed run; bad values stopped by the config check."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

import fmnist_lab.run as run_module
from fmnist_lab.run import History, train
from fmnist_lab.schema import ConfigError, check_config
from tests.conftest import without_clocks

FAST = ["model=three_fc", "data.test_size=200"]
STEPS = math.ceil(600 / 32)  # TINY: 600 training images, batches of 32


def checkpoint(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)


def test_the_default_optimizer_is_the_seeds_sgd(cfg_factory):
    make = instantiate(cfg_factory().optimizer)
    assert make.func is torch.optim.SGD
    assert make.keywords == {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
    assert not cfg_factory().scheduler  # scheduler=none


# The learning rate after the run's last step: (at least, at most).
@pytest.mark.slow  # trains every schedule for a few hundred steps
@pytest.mark.parametrize(("overrides", "last_lr"), [
    (["scheduler=cosine"], (0.0, 1e-12)),                   # decays to min_lr_ratio 0
    (["scheduler=step"], (0.9e-4, 1.1e-4)),                 # 0.01 x 0.1 x 0.1: both milestones
    (["scheduler=onecycle"], (0.0, 0.01 / 100)),            # far below its peak, optimizer.lr
    (["optimizer=adamw", "scheduler=onecycle", "loss.label_smoothing=0.1"], (0.0, 1e-5)),
    (["optimizer=adam", "scheduler=none"], (0.001, 0.001)),
])
def test_schedules_step_once_per_optimizer_step(tmp_path, cfg_factory, overrides, last_lr):
    cfg = cfg_factory(*FAST, "trainer.max_epochs=2", "data.group_batches=4", *overrides)
    check_config(cfg)
    result = train(cfg, tmp_path)
    # Learning, however slowly (SGD at lr 0.01 moves three_fc little in 38 steps): the loss falls.
    first, last = result["history"]
    assert result["status"] == "completed"
    assert last["train_loss"] < first["train_loss"] < math.log(10) and last["val_acc"] > 0.11
    ckpt = checkpoint(tmp_path)
    assert ckpt["global_step"] == 2 * STEPS
    assert last_lr[0] <= ckpt["optimizer_states"][0]["param_groups"][0]["lr"] <= last_lr[1]
    if cfg.scheduler:
        assert ckpt["lr_schedulers"][0]["last_epoch"] == 2 * STEPS


class StopAfterOneEpoch(History):
    """A run killed after its first epoch: last.ckpt written, then the fit ends."""

    def on_train_epoch_end(self, trainer, module) -> None:
        super().on_train_epoch_end(trainer, module)
        trainer.should_stop = True


@pytest.mark.slow  # trains, stops, resumes and trains again
def test_a_resumed_run_continues_its_schedule(tmp_path, cfg_factory, monkeypatch):
    cfg = cfg_factory(*FAST, "trainer.max_epochs=2", "scheduler=cosine", "optimizer.lr=0.05")
    straight = train(cfg, tmp_path / "straight")
    with monkeypatch.context() as m:
        m.setattr(run_module, "History", StopAfterOneEpoch)
        cut = train(cfg, tmp_path / "cut")
    assert len(cut["history"]) == 1
    # Half-way through the cosine the learning rate is still well above its end.
    assert checkpoint(tmp_path / "cut")["optimizer_states"][0]["param_groups"][0]["lr"] > 0.02
    (tmp_path / "cut" / "results.json").unlink()
    resumed = train(cfg, tmp_path / "cut")
    a, b = checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "cut")
    assert b["global_step"] == a["global_step"] == 2 * STEPS
    assert b["lr_schedulers"] == a["lr_schedulers"]
    assert (b["optimizer_states"][0]["param_groups"][0]["lr"]
            == a["optimizer_states"][0]["param_groups"][0]["lr"])
    # Epoch 2 learns the same (the stand-in callback kept epoch 1 under its own name).
    assert without_clocks(straight)[-1] == without_clocks(resumed)[-1]


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.label_smoothing=1.0"], "loss.label_smoothing=1.0 is not allowed: a number in [0, 1)"),
    (["model.dropout=1"], "model.dropout=1 is not allowed: a number in [0, 1)"),
    (["model.norm=layer"], "model.norm='layer' is not allowed: none or batch"),
    (["optimizer=adamw", "+optimizer.momentum=0.9"],
     "optimizer.momentum=0.9 is not allowed: no such key; AdamW takes lr, betas"),
    (["scheduler=cosine", "scheduler.warmup=1"], "scheduler.warmup=1 is not allowed"),
    (["scheduler=step", "scheduler.milestones=[5,8]"], "scheduler.milestones=[5, 8] is not"),
])
def test_bad_new_values_name_key_and_what_is_allowed(cfg_factory, overrides, message):
    with pytest.raises(ConfigError) as e:
        check_config(cfg_factory(*overrides))
    assert message in str(e.value)
