"""The study: a configuration and seed trains once; its record regenerates its report exactly;
a run that sat at chance is called collapsed, not completed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fmnist_lab import faults
from fmnist_lab.faults import CLAIMS_DIR, claim_config
from fmnist_lab.report import write_report
from fmnist_lab.report.docs import README_RECORD, update_readme_tables
from fmnist_lab.report.runs import group_sweeps, load_runs
from fmnist_lab.results import read_results, run_key
from tests.conftest import PATIENCE, ROOT, TINY, compose_config, run_cli, table
from tests.fakes import fake_result, write_sweep

STUDY = ROOT / "results" / "study"
# Every committed record of full-scale runs: the study; the tuned recipe's search and seeds.
RECORDS = [STUDY, ROOT / "results" / "tuned"]
records = pytest.mark.parametrize("record", RECORDS, ids=lambda p: p.name)
QUICK = [*TINY, "model=three_fc", "data.train_size=300", "data.test_size=200"]


@pytest.mark.slow
def test_a_config_and_seed_shared_by_two_sweeps_trains_once(tmp_path: Path):
    first = run_cli("fmnist_lab.train", "-m", *QUICK, "name=lrs", "optimizer.lr=0.01,0.1",
                    f"hydra.sweep.dir={tmp_path}/lrs", f"reuse_runs_in={tmp_path}")
    assert first.returncode == 0, first.stderr
    # data.batch_size=32 with lr 0.01 is the first sweep's job 0.
    second = run_cli("fmnist_lab.train", "-m", *QUICK, "name=batches", "data.batch_size=32,64",
                     f"hydra.sweep.dir={tmp_path}/batches", f"reuse_runs_in={tmp_path}")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "batches").iterdir() if p.is_dir()) == [
        "0_data.batch_size=32", "1_data.batch_size=64"]  # only what varies names a run

    shared = tmp_path / "batches/0_data.batch_size=32"
    trained = tmp_path / "lrs/0_optimizer.lr=0.01"
    result, original = read_results(shared), read_results(trained)
    assert (shared / result["reused_from"]).resolve() == trained.resolve()
    assert not (shared / "checkpoints").exists()  # nothing trained there
    assert result["test_acc"] == original["test_acc"] and result["run_key"] == original["run_key"]
    assert result["config"]["name"] == "batches"  # counted in its own experiment
    assert result["choices"]["model"] == "three_fc"
    assert "checkpoints" in {p.name for p in (tmp_path / "batches/1_data.batch_size=64").iterdir()}

    md = write_report(tmp_path).markdown.read_text()
    assert "4 runs, 3 of them trained" in md
    assert "`32` shares its 1 run(s) with `lrs`" in md
    assert len({r.result["run_key"] for r in load_runs(tmp_path)}) == 3

    # The same command skips both; another shared value reaching the same folders refuses.
    again = run_cli("fmnist_lab.train", "-m", *QUICK, "name=lrs", "optimizer.lr=0.01,0.1",
                    f"hydra.sweep.dir={tmp_path}/lrs", f"reuse_runs_in={tmp_path}")
    assert again.returncode == 0 and again.stdout.count("skipping") == 2
    other = run_cli("fmnist_lab.train", "-m", *QUICK, "name=lrs", "optimizer.lr=0.01,0.1",
                    "data.test_size=100", f"hydra.sweep.dir={tmp_path}/lrs")
    assert other.returncode != 0
    assert "holds a run of another config" in other.stderr and "Traceback" not in other.stderr
    assert read_results(trained) == original


@pytest.mark.slow
def test_sweeps_side_by_side_train_a_shared_config_once(tmp_path: Path):
    """Two sweeps reach the same config while a third process trains it: both wait; once it
    ends (here without a result), one of them trains it and the other reuses that."""
    shared = [*QUICK, "data.batch_size=32", "optimizer.lr=0.01"]
    key = run_key(OmegaConf.to_container(compose_config("config", *shared), resolve=True))
    logs = {name: tmp_path / f"{name}.log" for name in ("lrs", "batches")}
    grids = {"lrs": "optimizer.lr=0.01,0.1", "batches": "data.batch_size=32,64"}
    procs = {}
    with claim_config(tmp_path, key, tmp_path / "elsewhere"):
        for name, grid in grids.items():
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "fmnist_lab.train", "-m", *QUICK, f"name={name}", grid,
                 f"hydra.sweep.dir={tmp_path / name}", f"reuse_runs_in={tmp_path}"],
                cwd=ROOT, stdout=logs[name].open("w"), stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + PATIENCE
        waiting = f"waiting for pid {os.getpid()}"
        while not all(waiting in log.read_text() for log in logs.values()):
            assert time.time() < deadline and all(p.poll() is None for p in procs.values()), \
                "\n".join(log.read_text() for log in logs.values())
            time.sleep(0.5)
        assert not list(tmp_path.rglob("checkpoints"))  # neither trains while it waits
    for name, proc in procs.items():
        assert proc.wait(timeout=PATIENCE) == 0, logs[name].read_text()

    folders = [tmp_path / "lrs/0_optimizer.lr=0.01", tmp_path / "batches/0_data.batch_size=32"]
    results = [read_results(folder) for folder in folders]
    assert [r["run_key"] for r in results] == [key, key]
    reused = [bool(r.get("reused_from")) for r in results]
    assert sorted(reused) == [False, True]  # trained in one folder, reused in the other
    trained, twin = (folders[0], folders[1]) if reused[1] else (folders[1], folders[0])
    assert (twin / read_results(twin)["reused_from"]).resolve() == trained.resolve()
    assert (trained / "checkpoints").exists() and not (twin / "checkpoints").exists()
    assert not (tmp_path / CLAIMS_DIR).exists()  # every claim released, the folder gone


def test_a_claim_is_released_refreshed_and_taken_over_when_stale(tmp_path: Path, monkeypatch):
    lock = tmp_path / CLAIMS_DIR / "k.lock"
    monkeypatch.setattr(faults, "CLAIM_HEARTBEAT_S", 0.05)
    with claim_config(tmp_path, "k", tmp_path / "run"):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["folder"] == str(tmp_path / "run")
        os.utime(lock, (0, 0))
        time.sleep(0.5)
        assert time.time() - lock.stat().st_mtime < 5  # refreshed while held
    assert not lock.parent.exists()
    lock.parent.mkdir()

    # Another machine's claim cannot be checked by pid: once untouched for CLAIM_STALE_S,
    # its process is taken to have died.
    lock.write_text(json.dumps({"pid": 4242, "host": "node-7", "since": "2026-01-01 00:00:00",
                                "folder": "elsewhere"}))
    monkeypatch.setattr(faults, "CLAIM_STALE_S", 60)
    os.utime(lock, (time.time() - 120,) * 2)
    with claim_config(tmp_path, "k", tmp_path / "run"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_run_that_sits_at_chance_is_collapsed_and_never_best(tmp_path: Path):
    at_chance = fake_result("learning_rate", {"optimizer.lr": 1}, train_losses=(2.4, 2.31, 2.303))
    for entry in at_chance["history"]:
        entry["val_acc"] = 0.1 if entry["epoch"] > 1 else 0.3
    sweep = write_sweep(tmp_path, [
        fake_result("learning_rate", {"optimizer.lr": 0.01}, val_acc=0.85),
        fake_result("learning_rate", {"optimizer.lr": 0.1}, val_acc=0.5),
        at_chance])
    # A one-epoch run at chance is not judged: it may only be slow to start.
    slow = fake_result("learning_rate", {"optimizer.lr": 0.001}, train_losses=(2.3,))
    slow["history"][0]["val_acc"] = 0.1
    write_sweep(tmp_path / "one_epoch", [slow])
    md = write_report(sweep).markdown.read_text()
    rows = table(md, "learning_rate")
    assert rows["1"][2] == "collapsed (epoch 2)"
    assert rows["0.001"][2] == "completed"
    assert "optimizer.lr = `0.01`" in md  # best, though 0.1 also completed
    csv_statuses = {line.split(",")[2] for line in (tmp_path / "results.csv").read_text()
                    .splitlines()[1:]}
    assert "collapsed" in csv_statuses


def test_the_seed_study_numbers_stand_beside_ours(tmp_path: Path):
    sweep = write_sweep(tmp_path, [fake_result("batch_size", {"data.batch_size": b})
                                   for b in (64, 1024)])
    rows = table(write_report(sweep).markdown.read_text(), "batch_size")
    header = rows["header"]
    seed_column = header.index("seed study: train loss ep 1 → ep 10, acc")
    assert rows["64"][seed_column] == "0.6887 → 0.2440, 89.20 %"
    assert rows["1024"][seed_column] == "—"  # a value the seed did not run


@records
def test_the_committed_record_regenerates_its_report_exactly(tmp_path: Path, record: Path):
    assert (record / "report.md").is_file(), f"{record} holds a record and its report"
    copy = tmp_path / record.name
    shutil.copytree(record, copy)
    (copy / "report.md").unlink()
    write_report(copy)
    assert (copy / "report.md").read_text() == (record / "report.md").read_text()


@records
def test_the_committed_record_trains_no_config_twice(record: Path):
    runs = [json.loads(p.read_text()) for p in record.rglob("results.json")]
    trained = [r["run_key"] for r in runs if not r.get("reused_from")]
    assert trained and len(trained) == len(set(trained))
    assert all(r["status"] in ("completed", "diverged") for r in runs)
    # Full scale: all 55,000 (or 48,000 in 5-fold CV) training images, 10 epochs, SGD with
    # momentum 0.9 (but where the momentum experiment sweeps it).
    for r in runs:
        assert r["train_images"] in (55_000, 48_000) and r["test_images"] == 10_000
        if r["config"]["name"] == "compare-reference":
            continue  # Figure 12's ResNet-18: as many epochs as a CPU allows (docs/results.md)
        assert r["config"]["trainer"]["max_epochs"] == 10
        assert r["config"]["optimizer"]["momentum"] == 0.9 or r["config"]["name"] == "momentum"


def test_the_current_code_composes_the_committed_runs_identically():
    """`make study STUDY_DIR=results/study` must find every recorded run as the same run:
    a config key added since then needs its implied value in results.IMPLIED."""
    runs = [json.loads(p.read_text()) for p in STUDY.rglob("results.json")]
    assert runs
    for recorded in runs:
        cfg = compose_config("config", *recorded["overrides"])
        assert run_key(OmegaConf.to_container(cfg, resolve=True)) == recorded["run_key"], (
            recorded["overrides"])


def test_the_docs_results_are_the_records_tables():
    """Every table of ours in docs/results.md is generated from the record
    (`python -m fmnist_lab.report results/study --readme docs/results.md`), none hand-kept."""
    page = (ROOT / "docs" / "results.md").read_text()
    assert {"architecture", "learning_rate", "cross_validation", "compare"} <= set(
        README_RECORD.findall(page))
    compare = json.loads((STUDY / "compare" / "compare.json").read_text())
    assert update_readme_tables(page, group_sweeps(load_runs(STUDY)), compare) == page


def test_experiment_tuned_is_the_recorded_recipe():
    """`python -m fmnist_lab.train experiment=tuned` trains exactly the runs whose numbers the
    docs give: seeds 0, 1, 2 of results/tuned/recipe (the search rounds beside it ran
    earlier versions of the recipe, each with its composed config in its results.json)."""
    recipe = [json.loads(p.read_text()) for p in (RECORDS[1] / "recipe").rglob("results.json")]
    assert sorted(r["seed"] for r in recipe) == [0, 1, 2]
    for recorded in recipe:
        cfg = compose_config("config", "experiment=tuned", f"seed={recorded['seed']}")
        assert run_key(OmegaConf.to_container(cfg, resolve=True)) == recorded["run_key"]
        assert cfg.model.norm == "none" and recorded["num_params"] == 1_625_866
