"""Bad input, diverged runs, failed runs and interrupted sweeps, through the real command line."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fmnist_lab.run import train
from fmnist_lab.schema import ConfigError, check_config
from fmnist_lab.train import _from_ctrl_c
from tests.conftest import PATIENCE, ROOT, TINY, run_cli, without_clocks

FAST = [*TINY, "model=three_fc", "data.test_size=200"]


# Every rule, checked on composed configs (fast) ...
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=0"], "optimizer.lr=0 is not allowed: a number > 0"),
        (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed: a number > 0"),
        (["optimizer.momentum=1.0"], "optimizer.momentum=1.0 is not allowed: a number in [0, 1)"),
        (["data.batch_size=0"], "data.batch_size=0 is not allowed: an integer >= 1"),
        (["data.batch_size=1.5"], "data.batch_size=1.5 is not allowed: an integer >= 1"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed: an integer >= 1"),
        (["data.train_size=0"], "data.train_size=0 is not allowed"),
        (["transforms=hflip", "transforms.p=1.5"],
         "transforms.p=1.5 is not allowed: a probability in [0, 1]"),
        (["transforms=combined", "transforms.jitter=-0.5"],
         "transforms.jitter=-0.5 is not allowed: a brightness and contrast strength >= 0"),
        (["transforms=combined", "transforms.erase=2"],
         "transforms.erase=2 is not allowed: a probability in [0, 1]"),
        (["transforms=combined", "transforms.translate=1.5"],
         "transforms.translate=1.5 is not allowed: a shift in whole pixels from 0 to 14"),
        (["transforms=rotation", "transforms.degrees=-5"],
         "transforms.degrees=-5 is not allowed: an angle in degrees from 0 to 180"),
        (["transforms=rotation", "transforms.interpolation=cubic"],
         "transforms.interpolation='cubic' is not allowed: nearest or bilinear"),
        (["transforms=translate", "transforms.pad=30"],
         "transforms.pad=30 is not allowed: a shift in whole pixels from 0 to 14"),
        (["transforms=color_jitter", "transforms.contrast=-1"],
         "transforms.contrast=-1 is not allowed: a strength >= 0"),
        (["transforms=erase", "transforms.scale=[0.5,0.1]"],
         "transforms.scale=[0.5, 0.1] is not allowed: [low, high]: a share of the image's area"),
        (["transforms=erase", "transforms.ratio=[0,1]"],
         "transforms.ratio=[0, 1] is not allowed: [low, high]: aspect ratios"),
        (["transforms=erase", "transforms.value=2"],
         "transforms.value=2 is not allowed: a grey level in [0, 1]"),
        (["transforms=hflip", "+transforms.degrees=5"],
         "transforms.degrees=5 is not allowed: no such key; RandomHorizontalFlip takes p"),
        (["transforms=standard", "+transforms.p=0.5"],
         "transforms.p=0.5 is not allowed: no such key; Identity takes no keys"),
        (["data.num_folds=1"], "data.num_folds=1 is not allowed: null (hold-out) or an integer"),
        (["data.num_folds=5", "data.fold=5"], "data.fold=5 is not allowed: an integer in [0, "),
        (["data.num_folds=5", "data.fold=-1"], "data.fold=-1 is not allowed"),
        (["data.fold=2"], "data.fold=2 is not allowed: an integer in [0, data.num_folds), and 0"),
        (["seed=-3"], "seed=-3 is not allowed: an integer >= 0"),
        (["data.group_batches=0"], "data.group_batches=0 is not allowed: an integer >= 1"),
        (["data.channels_last=maybe"], "data.channels_last='maybe' is not allowed: true or false"),
        (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is not allowed: 32-true,"),
        (["+trainer.gradient_clip_val=1.0"],
         "trainer.gradient_clip_val=1.0 is not allowed: unset: the module steps the optimizer"),
        (["+trainer.accumulate_grad_batches=4"],
         "trainer.accumulate_grad_batches=4 is not allowed: 1: each batch is its own"),
        (["divergence_check_every=0"], "divergence_check_every=0 is not allowed: an integer >= 1"),
        (["+optimizer.nesterof=true"], "optimizer.nesterof=True is not allowed: no such key; "
                                       "SGD takes lr, momentum, dampening, weight_decay, "
                                       "nesterov"),
        (["+optimizer.divergence_check_every=5"],
         "optimizer.divergence_check_every=5 is not allowed: no such key; SGD takes"),
        (["optimizer=adam", "+optimizer.momentum=0.9"],
         "optimizer.momentum=0.9 is not allowed: no such key; Adam takes lr, betas"),
        (["+data.shuffle=false"], "data.shuffle=False is not allowed: no such key; data takes "
                                  "source, root, download, batch_size,"),
        (["+trainer.max_epoch=2"], "trainer.max_epoch=2 is not allowed: no such argument of "
                                   "Trainer; did you mean max_epochs?"),
        (["+trainer.colour=1"], "trainer.colour=1 is not allowed: no such argument of Trainer; "
                                "see the arguments of pytorch_lightning.Trainer"),
        (["+trainer.logger=false"], "trainer.logger=False is not allowed: set by "
                                    "fmnist_lab.train itself"),
    ],
)
def test_every_rule_names_key_value_and_what_is_allowed(cfg_factory, overrides, message):
    with pytest.raises(ConfigError) as e:
        check_config(cfg_factory(*overrides))
    assert message in str(e.value)


def test_the_default_config_passes(cfg_factory):
    check_config(cfg_factory())


# ... and through the real command line: a message, a non-zero exit, nothing trained.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=-1", "error: optimizer.lr=-1 is not allowed: a number > 0"),
        ("data.batch_size=abc", "error: data.batch_size='abc' is not allowed: an integer >= 1"),
        ("data.num_folds=5 data.fold=5", "error: data.fold=5 is not allowed"),
        ("trainer.max_epochs=0", "error: trainer.max_epochs=0 is not allowed"),
        ("+optimizer.nesterof=true", "error: optimizer.nesterof=True is not allowed: no such key"),
        ("+trainer.max_epoch=2", "error: trainer.max_epoch=2 is not allowed: no such argument"),
    ],
)
def test_bad_values_stop_before_training(tmp_path, override, message):
    run_dir = tmp_path / "run"
    proc = run_cli("fmnist_lab.train", *FAST, *override.split(), f"hydra.run.dir={run_dir}")
    assert proc.returncode != 0
    assert proc.stderr.strip() == message or proc.stderr.startswith(message)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints").exists()
    assert not run_dir.exists()  # not even the folder: bad input leaves nothing behind


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), [
    ("no_such_key=1", "Could not override 'no_such_key'"),
    ("model=four_fc", "Could not find 'model/four_fc'"),
])
def test_unknown_keys_and_options_keep_hydras_message(override, message):
    proc = run_cli("fmnist_lab.train", *FAST, override)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_run(tmp_path):
    proc = run_cli("fmnist_lab.train", "-m", *FAST, "optimizer.lr=0.01,0.1,-1",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode != 0
    assert "optimizer.lr=-1 is not allowed" in proc.stderr and "nothing was run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("results.json"))


def _broken_copy(tmp_path, data_files, stem: str, damage) -> str:
    """A copy of the data set whose `stem` file is damaged (`damage` of its gzipped bytes)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for other, path in data_files.items():
        if other != stem:
            shutil.copy(path, folder / path.name)
    content = data_files[stem].read_bytes()
    if data_files[stem].suffix != ".gz":
        content = gzip.compress(content)
    (folder / f"{stem}.gz").write_bytes(damage(content))
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[: len(b) // 2], "truncated or corrupt"),
    (lambda b: gzip.compress(b"\x00\x00\x09\x03" + bytes(16)), "bad magic number"),
])
def test_broken_data_file_names_itself(tmp_path, data_files, damage, message):
    root = _broken_copy(tmp_path, data_files, "train-images-idx3-ubyte", damage)
    proc = run_cli("fmnist_lab.train", *FAST, f"data.root={root}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode != 0
    assert "train-images-idx3-ubyte.gz" in proc.stderr and message in proc.stderr
    assert "make setup" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_diverging_lr_is_a_result_and_the_sweep_succeeds(tmp_path):
    proc = run_cli("fmnist_lab.train", "-m", *FAST, "optimizer.lr=0.01,10",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    results = {r["config"]["optimizer"]["lr"]: r for r in
               (json.loads(p.read_text()) for p in tmp_path.rglob("results.json"))}
    assert results[0.01]["status"] == "completed"
    assert results[10]["status"] == "diverged" and results[10]["diverged_epoch"] == 1
    assert results[10]["test_acc"] is None
    assert "1 completed, 1 diverged" in proc.stdout


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    # Batch norm cannot train on a batch of one image: 600 images in batches of 599 leave one
    # for the last, which fails inside training, where no config check can see it coming.
    proc = run_cli("fmnist_lab.train", "-m", *FAST, "model.norm=batch",
                   "data.batch_size=599,600", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode != 0
    statuses = sorted(json.loads(p.read_text())["status"] for p in tmp_path.rglob("results.json"))
    assert statuses == ["completed", "failed"]
    failed = next(json.loads(p.read_text()) for p in tmp_path.rglob("results.json")
                  if "599" in str(p))
    assert "more than 1 value per channel" in failed["error"]
    failed_lines = [line for line in proc.stderr.splitlines() if line.strip().startswith("failed:")]
    assert len(failed_lines) == 1 and "data.batch_size=599" in failed_lines[0]


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, cfg_factory):
    straight = train(cfg_factory("model=three_fc", "trainer.max_epochs=2"), tmp_path / "straight")
    # A run killed after its first epoch leaves last.ckpt and no results.json.
    train(cfg_factory("model=three_fc", "trainer.max_epochs=1"), tmp_path / "cut")
    (tmp_path / "cut" / "results.json").unlink()
    resumed = train(cfg_factory("model=three_fc", "trainer.max_epochs=2"), tmp_path / "cut")
    assert without_clocks(straight) == without_clocks(resumed)
    assert resumed["test_acc"] == straight["test_acc"]
    assert resumed["train_images"] == straight["train_images"]
    # It says where it resumed, and its seconds count both sittings' epochs: no phase exceeds
    # the total (the report spans it by its epochs on the wall clock, not as one stretch).
    assert resumed["resumed_after_epoch"] == 1 and "resumed_after_epoch" not in straight
    seconds = resumed["seconds"]
    assert seconds["other"] >= 0 and seconds["train"] + seconds["validate"] < seconds["total"]


@pytest.mark.slow
def test_killed_sweep_restarts_where_it_stopped(tmp_path):
    args = ["-m", *FAST, "seed=0,1,2", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_lab.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + PATIENCE
    while not list(tmp_path.rglob("results.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.read_bytes() for p in tmp_path.rglob("results.json")}
    assert before, "the first run never finished"
    assert all(json.loads(b)["status"] == "completed" for b in before.values())

    again = run_cli("fmnist_lab.train", *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipping") == len(before)
    for path, content in before.items():
        assert path.read_bytes() == content
    after = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    assert sorted(r["seed"] for r in after) == [0, 1, 2]
    assert all(r["status"] == "completed" for r in after)


@pytest.mark.slow
def test_run_killed_mid_training_resumes_from_its_last_epoch(tmp_path):
    args = [*FAST, "trainer.max_epochs=40", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_lab.train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.time() + PATIENCE
    while not last.exists() and time.time() < deadline:  # written after every epoch
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (tmp_path / "results.json").exists()
    epochs_done = torch.load(last, weights_only=False)["epoch"]
    assert epochs_done < 39, "the run finished before it could be killed"

    again = run_cli("fmnist_lab.train", *args)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["status"] == "completed"
    assert [e["epoch"] for e in result["history"]] == list(range(1, 41))


def test_results_json_is_never_half_written(tmp_path, cfg_factory, monkeypatch):
    # A crash while writing (simulated at the rename) leaves no results.json at all.
    replace = os.replace

    def crash(src, dst):
        if os.path.basename(dst) == "results.json":  # checkpoints are renamed into place too
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr("fmnist_lab.results.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_factory("model=three_fc"), tmp_path)
    assert not (tmp_path / "results.json").exists()
    assert "state_dict" in torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)


def _hydras_exit_after_ctrl_c_inside_omegaconf() -> SystemExit:
    """What reaches fmnist_lab.train's top level when Ctrl-C lands while Hydra composes a
    sweep's next job: OmegaConf's clean-up fails on the half-built node, Hydra wraps and
    reports that error, then exits 1."""
    try:
        try:
            try:
                raise KeyboardInterrupt
            finally:
                None._invalidate_flags_cache()  # noqa: B018 - what OmegaConf's clean-up hit
        except AttributeError as error:
            raise RuntimeError("Error merging override") from error
    except RuntimeError:
        try:
            sys.exit(1)
        except SystemExit as stop:
            return stop
    raise AssertionError("unreachable")


def test_an_exit_that_a_ctrl_c_led_to_counts_as_an_interruption():
    assert _from_ctrl_c(KeyboardInterrupt())
    assert _from_ctrl_c(_hydras_exit_after_ctrl_c_inside_omegaconf())
    assert not _from_ctrl_c(SystemExit(1))
    assert not _from_ctrl_c(SystemExit("error: optimizer.lr=-1 is not allowed: a number > 0"))
