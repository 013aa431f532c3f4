"""The study's sweeps and the launchers, run for real on a few hundred images."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PNG_SIGNATURE, ROOT, TINY, column, run_cli, table

FAST = [*TINY, "model=three_fc", "data.train_size=300", "data.test_size=200"]
GRIDS = {
    "architecture": ("model", 4),
    "learning_rate": ("optimizer.lr", 5),
    "batch_size": ("data.batch_size", 4),
    "weight_init": ("init", 4),
    "augmentation": ("transforms", 4),
    "cross_validation": ("data.fold", 5),
    "momentum": ("optimizer.momentum", 2),  # not the seed's: what explains its losses
}


def _results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]


@pytest.mark.slow
def test_make_study_runs_every_experiment_then_one_report(tmp_path):
    """The one end-to-end test: every experiment's sweep through `make study` (300 images, one
    epoch), then one report over all of them, as a user runs them."""
    # No model= or batch size here: on the command line they would replace two sweeps' grids.
    args = " ".join(o for o in FAST if not o.startswith(("model=", "data.batch_size=")))
    # -o: the suite runs after `make setup`; do not reinstall because pyproject.toml is newer.
    proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "data",
                           # Two sweeps side by side (the default on CPUs), which share the
                           # default run: one trains it, the others reuse it.
                           "study", f"STUDY_DIR={tmp_path}", "SEEDS=0", "JOBS=2",
                           f"ARGS={args}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for experiment, (key, count) in GRIDS.items():
        runs = _results(tmp_path / experiment)
        assert len(runs) == count, experiment
        assert all(r["config"]["name"] == experiment for r in runs)
        values = {next(o for o in r["overrides"] if o.startswith(f"{key}=")) for r in runs}
        assert len(values) == count, experiment
    # The default run belongs to five experiments; two sweeps at a time still train it once.
    trained = [r["run_key"] for r in _results(tmp_path) if not r.get("reused_from")]
    assert len(trained) == len(set(trained))
    assert sum(1 for r in _results(tmp_path) if r.get("reused_from")) == 4
    assert {r["model"] for r in _results(tmp_path / "architecture")} == {
        "two_conv_one_fc", "one_conv_two_fc", "three_fc", "three_conv"}
    assert str(tmp_path / "report.md") in proc.stdout
    report = (tmp_path / "report.md").read_text()
    for experiment in GRIDS:
        assert f"## {experiment}" in report
        assert (tmp_path / f"{experiment}_loss.png").read_bytes()[:8] == PNG_SIGNATURE
    lr = table(report, "learning_rate: optimizer.lr")
    assert list(lr)[1:] == ["0.0001", "0.001", "0.01", "0.1", "1"]
    # lr=1 may or may not diverge in one tiny epoch; the others complete with a test accuracy.
    for value in ("0.0001", "0.001", "0.01"):
        assert column(lr, value, "status") == "completed"
        assert column(lr, value, "test acc %") != "—"
    assert column(lr, "0.01", "params") == "1,625,866"  # the default network
    folds = table(report, "cross_validation: data.fold")
    assert list(folds)[1:] == ["0", "1", "2", "3", "4", "**mean ± std**"]
    with (tmp_path / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == sum(count for _, count in GRIDS.values())


def test_experiment_grids_declare_the_seeds_values(cfg_factory):
    from omegaconf import OmegaConf

    expected = {
        "architecture": "two_conv_one_fc,one_conv_two_fc,three_fc,three_conv",
        "learning_rate": "0.0001,0.001,0.01,0.1,1",
        "batch_size": "64,128,256,512",
        "weight_init": "xavier_uniform,xavier_normal,kaiming_uniform,kaiming_normal",
        "augmentation": "standard,hflip,color_jitter,rotation",
        "cross_validation": "0,1,2,3,4",
    }
    conf = Path(__file__).resolve().parents[1] / "conf" / "experiment"
    for name, grid in expected.items():
        experiment = OmegaConf.load(conf / f"{name}.yaml")
        assert str(experiment.hydra.sweeper.params[GRIDS[name][0]]) == grid
        assert experiment.hydra.mode == "MULTIRUN"  # a sweep without -m


@pytest.mark.slow
def test_sweep_over_seeds_combines_with_an_experiment(tmp_path):
    proc = run_cli("fmnist_lab.train", "-m", "experiment=batch_size", "seed=0,1", *FAST,
                   "data.batch_size=64,128", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    runs = _results(tmp_path)
    assert sorted((r["seed"], r["config"]["data"]["batch_size"]) for r in runs) == [
        (0, 64), (0, 128), (1, 64), (1, 128)]


CORES = os.cpu_count() or 1


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "threads"), [
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], max(1, CORES // 2)),
    (["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
      "hydra.launcher.timeout_min=10"], 1),
])
def test_parallel_launchers_finish_a_two_job_sweep(tmp_path, launcher, threads):
    proc = run_cli("fmnist_lab.train", "-m", *launcher, "seed=0,1", *FAST,
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    runs = _results(tmp_path)
    assert sorted(r["seed"] for r in runs) == [0, 1]
    assert all(r["status"] == "completed" for r in runs)
    # Two jobs on one machine split its cores rather than each taking all of them.
    assert [r["config"]["num_threads"] for r in runs] == [threads, threads]
    assert threads < CORES or CORES == 1


def test_slurm_preset_composes(cfg_factory):
    from tests.conftest import compose_config

    cfg = compose_config("config", "hydra/launcher=slurm", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.cpus_per_task == 4


def test_a_command_line_value_pins_a_swept_key_out_of_the_run_names():
    from omegaconf import OmegaConf

    from fmnist_lab.keys import constant_keys

    def sweep(params, task):
        return OmegaConf.create({"hydra": {"sweeper": {"params": params},
                                           "overrides": {"task": task}}})

    # experiment=tuned sweeps seed: 0,1,2; seed=0 on the command line leaves one value.
    pinned = sweep({"seed": "0,1,2"}, ["seed=0", "transforms.erase=0.25,0.0"])
    assert constant_keys(pinned) == ["seed"]
    widened = sweep({"model.dropout": "0.3"}, ["model.dropout=0.1,0.3", "seed=1"])
    assert constant_keys(widened) == ["seed"]


def test_only_a_sweep_with_something_varying_leaves_the_constants_out_of_its_names():
    from omegaconf import OmegaConf

    from fmnist_lab.sweep import NameRunsByWhatVaries

    def named(task):
        config = OmegaConf.create({"hydra": {
            "sweeper": {"params": None}, "overrides": {"task": task, "hydra": []},
            "job": {"config": {"override_dirname": {"exclude_keys": ["experiment"]}}}}})
        NameRunsByWhatVaries().on_multirun_start(config)
        return list(config.hydra.overrides.hydra)

    assert named(["seed=0", "optimizer.lr=0.1,1"]) == [
        "hydra.job.config.override_dirname.exclude_keys=[experiment,seed]"]
    # One job: its overrides name its folder (0_model=three_fc,seed=0), not a bare 0_.
    assert named(["seed=0", "model=three_fc"]) == []


def test_threads_are_split_between_parallel_jobs():
    from omegaconf import OmegaConf

    from fmnist_lab.sweep import threads_per_job

    def hydra_cfg(launcher):
        return OmegaConf.create({"launcher": launcher})

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    cores = CORES
    assert threads_per_job(hydra_cfg({"_target_": joblib, "n_jobs": 2})) == max(1, cores // 2)
    assert threads_per_job(hydra_cfg({"_target_": joblib, "n_jobs": -1})) == 1
    assert threads_per_job(hydra_cfg({"_target_": local, "cpus_per_task": 3})) == 3
    assert threads_per_job(hydra_cfg({"_target_": basic})) is None


@pytest.mark.slow
def test_optuna_search_maximises_validation_accuracy(tmp_path):
    import yaml

    proc = run_cli("fmnist_lab.train", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                   *FAST, f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert {"optimizer.lr", "init"} <= best["best_params"].keys()
    runs = _results(tmp_path)
    assert len(runs) == 2
    best_run = max(runs, key=lambda r: r["history"][-1]["val_acc"])
    assert best["best_value"] == pytest.approx(best_run["history"][-1]["val_acc"])
