"""Real training runs on a few hundred real images, through the code users run."""

import json
import os
import socket
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from fmnist_lab.run import train
from tests.conftest import TINY, run_cli, without_clocks

HOST = socket.gethostname()

RESULT_FIELDS = {"status", "model", "num_params", "seed", "overrides", "history", "test_loss",
                 "test_acc", "device", "train_images_per_second"}
EPOCH_FIELDS = {"epoch", "train_loss", "val_loss", "val_acc", "seconds"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.conftest import make_cfg

    out = tmp_path_factory.mktemp("run")
    cfg = make_cfg("model=three_fc", "trainer.max_epochs=2", "optimizer.lr=0.05")
    return out, train(cfg, out, overrides=["model=three_fc"])


def test_run_writes_results_with_every_field(tiny_run):
    out, result = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert RESULT_FIELDS <= on_disk.keys()
    assert on_disk["status"] == "completed"
    assert on_disk["model"] == "three_fc" and on_disk["num_params"] == 94_154
    assert [e["epoch"] for e in on_disk["history"]] == [1, 2]
    assert all(EPOCH_FIELDS <= e.keys() for e in on_disk["history"])
    assert on_disk["device"] == "cpu" and on_disk["train_images_per_second"] > 0
    # Each epoch's wall clock (the study's wall time) and what the run ran on.
    ends = [datetime.fromisoformat(e["ended"]) for e in on_disk["history"]]
    assert ends == sorted(ends) and all(e.tzinfo is not None for e in ends)
    assert abs(datetime.now(timezone.utc) - ends[-1]) < timedelta(minutes=10)
    assert on_disk["machine"]["cpu_count"] >= 1 and on_disk["machine"]["torch_threads"] >= 1
    assert (on_disk["train_images"], on_disk["val_images"], on_disk["test_images"]) == (600, 500,
                                                                                      1000)
    assert on_disk["num_classes"] == 10
    # Where its seconds went, by phase; the phases add up to the whole.
    seconds = on_disk["seconds"]
    assert {"data", "train", "validate", "test", "other", "total"} == seconds.keys()
    assert seconds["train"] > 0 and seconds["validate"] > 0 and seconds["test"] > 0
    parts = sum(v for k, v in seconds.items() if k != "total")
    assert parts == pytest.approx(seconds["total"], abs=0.01)
    # Every validation and test image's predicted class, for paired comparisons of runs.
    with np.load(out / on_disk["predictions"]) as saved:
        assert saved["val_label"].shape == (500,) and saved["test_label"].shape == (1000,)
        test_acc = (saved["test_predicted"] == saved["test_label"]).mean()
        val_acc = (saved["val_predicted"] == saved["val_label"]).mean()
    assert test_acc == pytest.approx(on_disk["test_acc"], abs=1e-6)
    assert val_acc == pytest.approx(on_disk["history"][-1]["val_acc"], abs=1e-6)


def test_run_learns_something(tiny_run):
    _, result = tiny_run
    assert result["test_acc"] > 0.5  # chance is 0.1
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]


def test_run_writes_tensorboard_events_and_a_checkpoint(tiny_run):
    out, _ = tiny_run
    events = list(out.glob("events.out.tfevents.*"))  # in the run folder: TensorBoard's name
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "test/acc", "train/diverged"} <= tags
    assert (out / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_same_seed_same_history_on_cpu(tmp_path, cfg_factory):
    runs = [train(cfg_factory("model=three_fc", "transforms=rotation", f"seed={s}"),
                  tmp_path / str(i)) for i, s in enumerate((7, 7, 8))]
    assert without_clocks(runs[0]) == without_clocks(runs[1])
    assert runs[0]["test_acc"] == runs[1]["test_acc"]
    assert without_clocks(runs[0]) != without_clocks(runs[2])


def _global_step(run_dir) -> int:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    return ckpt["global_step"]


@pytest.mark.slow
def test_group_size_changes_nothing_but_speed(tmp_path, cfg_factory):
    # 600 images in batches of 32: 19 optimizer steps an epoch, whatever the grouping,
    # with the random flips drawn in the same order.
    runs = {g: train(cfg_factory("model=three_fc", "transforms=hflip", "trainer.max_epochs=2",
                                 f"data.group_batches={g}"), tmp_path / str(g))
            for g in (1, 4, 32)}
    # Same weights at every epoch's end: validation and test agree to the last bit. The
    # training loss is summed in another order (per group), so to rounding.
    exact = [[{k: v for k, v in e.items() if k != "train_loss"} for e in without_clocks(runs[g])]
             for g in runs]
    assert exact[0] == exact[1] == exact[2]
    assert runs[1]["test_acc"] == runs[4]["test_acc"] == runs[32]["test_acc"]
    for g in (4, 32):
        assert [e["train_loss"] for e in runs[g]["history"]] == pytest.approx(
            [e["train_loss"] for e in runs[1]["history"]], rel=1e-6)
    assert all(_global_step(tmp_path / str(g)) == 2 * 19 for g in runs)




@pytest.mark.parametrize(("every", "steps"), [(1, range(1, 19)), (1000, [19])])
def test_divergence_is_caught_within_divergence_check_every_steps(tmp_path, cfg_factory,
                                                                   every, steps):
    # lr 10 makes the loss non-finite within a few of the epoch's 19 steps: checked every
    # step, the run stops there; checked every 1000, at the epoch's end.
    result = train(cfg_factory("model=three_fc", "optimizer.lr=10",
                               f"divergence_check_every={every}"), tmp_path)
    assert result["status"] == "diverged" and result["diverged_epoch"] == 1
    assert _global_step(tmp_path) in steps


@pytest.mark.slow
def test_conv_net_trains_with_every_augmentation(tmp_path, cfg_factory):
    for t in ("hflip", "color_jitter"):
        result = train(cfg_factory("model=three_conv", f"transforms={t}", "init=kaiming_normal",
                                   "data.train_size=300"), tmp_path / t)
        assert result["status"] == "completed" and result["test_acc"] > 0.2


@pytest.mark.slow
def test_command_line_run(tmp_path):
    proc = run_cli("fmnist_lab.train", "model=three_fc", "optimizer.lr=0.05", *TINY,
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["overrides"][:2] == ["model=three_fc", "optimizer.lr=0.05"]
    assert result["config"]["optimizer"]["lr"] == 0.05
    assert (tmp_path / ".hydra" / "config.yaml").exists()
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_models_run_on_gpu_when_asked(tmp_path, cfg_factory):
    if not torch.cuda.is_available():
        pytest.skip("no GPU on this machine; the GPU path is checked on the lent H100")
    result = train(cfg_factory("trainer.accelerator=gpu"), tmp_path)
    assert result["device"] == "cuda"


def test_runs_side_by_side_on_a_machine_with_several_gpus_each_get_their_own(
        tmp_path, cfg_factory, monkeypatch, caplog):
    from fmnist_lab import run as train_module
    from fmnist_lab.faults import hold_gpu

    def held_by(pid: int, *indices: int) -> None:
        for i in indices:
            (tmp_path / f"gpu{i}.lock").write_text(json.dumps({"pid": pid, "host": HOST}))

    held_by(1, 0)  # pid 1 lives as long as the machine: GPU 0 is another run's
    with hold_gpu(2, tmp_path) as index:
        assert index == 1
        assert json.loads((tmp_path / "gpu1.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "gpu1.lock").exists()  # released at the end of the run
    held_by(1, 0, 1)
    with hold_gpu(2, tmp_path) as index:  # all held: shares one, and says so
        assert index in (0, 1)
    assert "all 2 GPUs are held by other runs" in caplog.text
    held_by(2**22 + 1, 0)  # a lock left by a process that has ended is taken over
    with hold_gpu(2, tmp_path) as index:
        assert index == 0

    # What a run asks Lightning for: one GPU of its own only where there are several and it
    # wants one (trainer.devices=1, the default) on a GPU.
    monkeypatch.setattr(train_module, "hold_gpu", lambda count: hold_gpu(count, tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for lock in tmp_path.glob("gpu*.lock"):
        lock.unlink()
    held_by(1, 0)
    on_gpu = "trainer.accelerator=auto"
    with train_module._gpu_of_its_own(cfg_factory(on_gpu)) as args:
        assert args == {"devices": [1]}
    for other in ("trainer.accelerator=cpu", "trainer.devices=2"):
        with train_module._gpu_of_its_own(cfg_factory(on_gpu, other)) as args:
            assert args == {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with train_module._gpu_of_its_own(cfg_factory(on_gpu)) as args:
        assert args == {}
