"""A step budget (trainer.max_steps=N): exactly N optimizer steps whatever the data size,
validation at fixed step points, a history keyed by step, schedules over N steps, resume
mid-budget, and the bad inputs. Real training on a few hundred real images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fmnist_lab.data import StepBudget
from fmnist_lab.run import train
from fmnist_lab.schema import ConfigError, check_config
from tests.conftest import PATIENCE, ROOT, TINY, make_cfg, run_cli, without_clocks

# TINY's 600 training images in batches of 32: 19 optimizer steps an epoch, the last short.
BUDGET = ["model=three_fc", "trainer.max_epochs=-1"]


def _checkpoint(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)


@pytest.mark.parametrize("train_size", [300, 600])
def test_a_budget_trains_exactly_n_steps_whatever_the_data_size(tmp_path, train_size):
    result = train(make_cfg(*BUDGET, f"data.train_size={train_size}", "trainer.max_steps=45",
                            "trainer.val_check_interval=10"), tmp_path)
    steps_per_epoch = -(-train_size // 32)
    assert _checkpoint(tmp_path)["global_step"] == 45
    assert result["status"] == "completed"
    history = result["history"]
    assert [e["step"] for e in history] == [10, 20, 30, 40, 45]  # validated there, and at N
    assert [e["epoch"] for e in history] == [round(s / steps_per_epoch, 4)
                                             for s in (10, 20, 30, 40, 45)]
    assert all(0 < e["val_acc"] <= 1 and e["train_loss"] > 0 for e in history)
    assert result["train_images"] == train_size and result["test_acc"] > 0.3
    assert result["diverged_step"] is None and "diverged_epoch" not in result


def test_without_an_interval_a_budget_validates_at_ten_points(tmp_path):
    result = train(make_cfg(*BUDGET, "trainer.max_steps=25"), tmp_path)
    assert [e["step"] for e in result["history"]] == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert StepBudget(2000, 200).intervals == 10 and StepBudget(25, 3).intervals == 9


def test_trainer_max_steps_alone_is_a_budget():
    cfg = make_cfg("trainer.max_steps=80", "~trainer.max_epochs")
    assert StepBudget.of(cfg.trainer) == StepBudget(80, 8)
    cfg = make_cfg("trainer.max_steps=80")  # TINY sets max_epochs=1 on the command line
    with pytest.raises(ConfigError, match="trainer.max_epochs=1 is not allowed: .*not both"):
        check_config(cfg)
    from tests.conftest import compose_config
    composed = compose_config("config", "trainer.max_steps=80")  # the default's 10 epochs
    assert composed.trainer.max_epochs == -1 and StepBudget.of(composed.trainer).steps == 80
    assert compose_config("config").trainer.max_epochs == 10  # no budget: 10 epochs


def test_a_budget_of_whole_epochs_is_the_epoch_run_step_for_step(tmp_path):
    # 2 epochs of 19 steps against 38 steps validated every 19: the same batches in the same
    # order, so the same weights at every validation, to the last bit.
    epochs = train(make_cfg("model=three_fc", "trainer.max_epochs=2"), tmp_path / "epochs")
    steps = train(make_cfg(*BUDGET, "trainer.max_steps=38", "trainer.val_check_interval=19"),
                  tmp_path / "steps")
    assert [e["step"] for e in steps["history"]] == [19, 38]
    assert [e["epoch"] for e in steps["history"]] == [1.0, 2.0]
    drop = ("epoch", "step", "train_loss")  # the training loss is summed per group, to rounding
    assert [{k: v for k, v in e.items() if k not in drop} for e in without_clocks(epochs)] == \
        [{k: v for k, v in e.items() if k not in drop} for e in without_clocks(steps)]
    assert steps["test_acc"] == epochs["test_acc"]


@pytest.mark.slow
def test_groups_cut_at_epochs_and_validation_points_change_nothing_but_speed(tmp_path):
    # 50 steps validated every 7: intervals that start inside an epoch and inside a group.
    runs = {g: train(make_cfg(*BUDGET, "trainer.max_steps=50", "trainer.val_check_interval=7",
                              "transforms=hflip", f"data.group_batches={g}"), tmp_path / str(g))
            for g in (1, 4, 32)}
    exact = [[{k: v for k, v in e.items() if k != "train_loss"} for e in without_clocks(r)]
             for r in runs.values()]
    assert exact[0] == exact[1] == exact[2]
    assert runs[1]["test_acc"] == runs[4]["test_acc"] == runs[32]["test_acc"]
    assert all(_checkpoint(tmp_path / str(g))["global_step"] == 50 for g in runs)


def test_a_schedule_spans_the_budget(tmp_path):
    # Cosine from lr to 0 over exactly N steps: at step N the learning rate has reached 0.
    train(make_cfg(*BUDGET, "scheduler=cosine", "scheduler.warmup=0", "trainer.max_steps=30",
                   "optimizer.lr=0.05"), tmp_path)
    state = _checkpoint(tmp_path)
    assert state["lr_schedulers"][0]["last_epoch"] == 30
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0, abs=1e-9)


def test_a_diverged_budget_says_at_which_step(tmp_path):
    result = train(make_cfg(*BUDGET, "optimizer.lr=10", "divergence_check_every=1",
                            "trainer.max_steps=60"), tmp_path)
    assert result["status"] == "diverged"
    assert 1 <= result["diverged_step"] <= 19 and result["test_acc"] is None


def test_a_run_key_tells_budgets_apart(tmp_path):
    from omegaconf import OmegaConf

    from fmnist_lab.results import run_key

    keys = {n: run_key(OmegaConf.to_container(make_cfg(*BUDGET, f"trainer.max_steps={n}"),
                                              resolve=True)) for n in (80, 400)}
    assert keys[80] != keys[400]


@pytest.mark.slow
def test_a_budget_killed_mid_run_resumes_and_ends_at_exactly_n_steps(tmp_path):
    # A cosine schedule over the whole budget: a resumed run that restarted its schedule, its
    # data order or its step count would not match the run that was never stopped.
    # 30 validation points: the kill lands long before the last, however fast the machine.
    args = [*TINY, *BUDGET, "trainer.max_steps=570", "trainer.val_check_interval=19",
            "scheduler=cosine", "optimizer.lr=0.05"]
    straight = run_cli("fmnist_lab.train", *args, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr
    run_dir = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_lab.train", *args,
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + PATIENCE
    while not last.exists() and time.time() < deadline:  # renamed into place whole
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists()
    kept = _checkpoint(run_dir)["global_step"]
    assert kept % 19 == 0 and kept < 570, "the run finished before it could be killed"

    again = run_cli("fmnist_lab.train", *args, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert "after 570 steps" in again.stdout
    resumed = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert _checkpoint(run_dir)["global_step"] == 570
    assert [e["step"] for e in resumed["history"]] == list(range(19, 571, 19))
    assert resumed["resumed_after_step"] == kept
    assert without_clocks(resumed) == without_clocks(reference)
    assert resumed["test_acc"] == reference["test_acc"]
    assert list(run_dir.rglob("results.json")) == [run_dir / "results.json"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.max_steps=0"], "trainer.max_steps=0 is not allowed: an integer >= 1 (a step "
                              "budget"),
    (["trainer.max_steps=1.5"], "trainer.max_steps=1.5 is not allowed: an integer >= 1"),
    (["trainer.max_epochs=3", "trainer.max_steps=100"],
     "trainer.max_epochs=3 is not allowed: an integer >= 1, or -1 (or null) with "
     "trainer.max_steps: a run's length is given in epochs or in steps, not both"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is not allowed: an integer >= 1"),
    (["trainer.max_epochs=-1", "trainer.max_steps=100", "trainer.val_check_interval=101"],
     "trainer.val_check_interval=101 is not allowed: null (every epoch; with "
     "trainer.max_steps, ten evenly spaced steps), or with trainer.max_steps a number of "
     "optimizer steps from 1 to trainer.max_steps"),
    (["trainer.max_epochs=-1", "trainer.max_steps=100", "trainer.val_check_interval=0.5"],
     "trainer.val_check_interval=0.5 is not allowed"),
    (["trainer.val_check_interval=10"], "trainer.val_check_interval=10 is not allowed"),
])
def test_bad_budgets_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as e:
        check_config(make_cfg(*overrides))
    assert message in str(e.value)


@pytest.mark.slow
def test_a_bad_budget_stops_the_command_before_any_folder(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("fmnist_lab.train", *TINY, "trainer.max_steps=20",
                   "trainer.val_check_interval=50", "trainer.max_epochs=null",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: trainer.val_check_interval=50 is not allowed")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_sweep_of_budgets_is_named_and_reported_by_its_steps(tmp_path):
    proc = run_cli("fmnist_lab.train", "-m", *TINY, *BUDGET, "trainer.max_steps=20,40",
                   "trainer.val_check_interval=10", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "after 40 steps" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "0_trainer.max_steps=20", "1_trainer.max_steps=40"]
    report = run_cli("fmnist_lab.report", str(tmp_path))
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "report.md").read_text()
    assert "| trainer.max_steps |" in md and "train loss step 10" in md
    assert "val acc % last step" in md
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert "steps" in header and "diverged_step" in header
    import csv
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert sorted(r["steps"] for r in rows) == ["20", "40"]
