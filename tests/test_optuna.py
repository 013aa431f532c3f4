"""hparams_search=optuna on the project's own sweeper (hydra_plugins/fmnist_lab_sweepers/
optuna.py): pruning inside the runs, a search started again continuing its study, two workers
sharing one study, bad input, optuna-dashboard over HTTP, and reading a study without torch
(fmnist_lab.search)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fmnist_lab.report import write_report
from fmnist_lab.search import JOURNAL, STUDY_NAME, open_storage, trial_counts
from tests.conftest import PATIENCE, PNG_SIGNATURE, ROOT, TINY, run_cli
from tests.fakes import fake_result

optuna = pytest.importorskip("optuna")

# Two epochs on a few hundred images: a trial takes seconds.
FAST = [*TINY, "model=three_fc", "data.train_size=300", "data.val_size=300",
        "data.test_size=200", "trainer.max_epochs=2"]
# Every run is pruned after its first epoch: no run reaches 99 % validation accuracy.
PRUNE_ALL = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=0.99"]


def search(folder: Path, *overrides: str) -> list[str]:
    return ["hparams_search=optuna", *FAST, f"hydra.sweep.dir={folder}", *overrides]


def study(folder: Path):
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(folder / JOURNAL))


def run_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and re.match(r"\d+_", p.name)),
                  key=lambda p: int(p.name.split("_", 1)[0]))


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def counted(trials: list) -> list:
    """The search's trials: attempts cut off and asked again left out."""
    return [t for t in trials if not t.user_attrs.get("interrupted")]


@pytest.mark.slow
def test_pruned_runs_stop_at_once_and_a_resumed_search_keeps_them(tmp_path):
    first = run_cli("fmnist_lab.train", *search(tmp_path, "hydra.sweeper.n_trials=2", *PRUNE_ALL))
    assert first.returncode == 0, first.stderr
    assert "2 pruned" in first.stdout  # the sweep's summary: pruned, not failed
    trials = study(tmp_path).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [1] for t in trials)  # step = epoch
    runs = run_folders(tmp_path)
    assert [r.name.split("_")[0] for r in runs] == ["0", "1"]
    for run, trial in zip(runs, trials, strict=True):
        result = results(run)
        assert result["status"] == "pruned" and result["pruned_epoch"] == 1
        assert [e["epoch"] for e in result["history"]] == [1]  # stopped at once
        assert result["test_acc"] is None
        assert trial.user_attrs["run_dir"] == run.name
        assert trial.intermediate_values[1] == pytest.approx(result["history"][0]["val_acc"])
    written = {r: (r / "results.json").stat().st_mtime_ns for r in runs}
    # The search's space covers the new keys.
    assert {"optimizer", "optimizer.lr", "optimizer.weight_decay", "scheduler",
            "loss.label_smoothing", "model.dropout", "transforms"} <= trials[0].params.keys()

    # Started again with 3 trials in all and no pruning: one trial more, the pruned two kept.
    again = run_cli("fmnist_lab.train", *search(tmp_path, "hydra.sweeper.n_trials=3",
                                                "hydra/sweeper/pruner=nop"))
    assert again.returncode == 0, again.stderr
    assert "with 2 finished trial(s); 1 to go" in again.stdout
    after = study(tmp_path).trials
    assert [t.state.name for t in after] == ["PRUNED", "PRUNED", "COMPLETE"]
    assert [t.params for t in after[:2]] == [t.params for t in trials]
    assert after[2].params not in [t.params for t in trials]  # a new draw, not trial 0's
    assert {r: (r / "results.json").stat().st_mtime_ns for r in runs} == written  # not retrained
    runs = run_folders(tmp_path)
    assert [r.name.split("_")[0] for r in runs] == ["0", "1", "2"]
    assert results(runs[2])["status"] == "completed"
    assert after[2].value == pytest.approx(results(runs[2])["history"][-1]["val_acc"])
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_trial: 2" in best


@pytest.mark.slow
def test_a_killed_search_started_again_resumes_its_trial_and_reaches_n_trials(tmp_path):
    """SIGKILL while trial 1 trains: started again, the trial left running is failed as
    interrupted and its parameters asked again first; the retry runs in the same folder,
    and the search has 3 trials in all."""
    args = search(tmp_path, "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=nop",
                  "trainer.max_epochs=3")
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_lab.train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + PATIENCE
        while not any(p.name.startswith("1_") for p in tmp_path.glob("*_*")):
            assert proc.poll() is None, "the search ended before trial 1 started"
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cut = study(tmp_path).trials
    assert [t.state.name for t in cut] == ["COMPLETE", "RUNNING"]

    again = run_cli("fmnist_lab.train", *args)
    assert again.returncode == 0, again.stderr
    assert "trial 1 was left running by process" in again.stdout
    trials = study(tmp_path).trials
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["interrupted"]
    retry = trials[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == trials[1].params
    assert retry.user_attrs["run_dir"].startswith("1_")  # the interrupted trial's folder
    kept = counted(trials)
    assert len(kept) == 3 and all(t.state.name == "COMPLETE" for t in kept)
    assert [r.name.split("_")[0] for r in run_folders(tmp_path)] == ["0", "1", "3"]
    assert all(results(r)["status"] == "completed" for r in run_folders(tmp_path))
    assert trial_counts(study(tmp_path)) == {"complete": 3, "pruned": 0, "fail": 0,
                                             "running": 0, "waiting": 0, "interrupted": 1}


@pytest.mark.slow
def test_two_workers_share_one_study_without_running_a_trial_twice(tmp_path):
    """Two shells started together on the same hydra.sweep.dir: n_trials in all, each trial
    run once, in its own folder, by one of the two."""
    args = search(tmp_path, "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=nop",
                  "num_threads=1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "fmnist_lab.train", *args], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err and "Traceback" not in err
    trials = study(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {p.pid for p in procs}  # both worked
    runs = run_folders(tmp_path)
    assert [r.name.split("_")[0] for r in runs] == ["0", "1", "2", "3"]
    assert sorted(t.user_attrs["run_dir"] for t in trials) == [r.name for r in runs]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4


@pytest.mark.slow
def test_joblib_runs_a_batch_of_trials_side_by_side(tmp_path):
    proc = run_cli("fmnist_lab.train", *search(
        tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "hydra/sweeper/pruner=nop"))
    assert proc.returncode == 0, proc.stderr
    trials = study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert [r.name.split("_")[0] for r in run_folders(tmp_path)] == ["0", "1"]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "key"), [
    (["hydra.sweeper.pruner._target_=optuna.pruners.NoSuchPruner"],
     "hydra.sweeper.pruner._target_"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler"],
     "hydra.sweeper.sampler._target_"),
    (["hydra.sweeper.pruner._target_=optuna.pruners.NopPruner"], "hydra.sweeper.pruner"),
    (["hydra/sweeper/pruner=threshold"], "hydra.sweeper.pruner"),  # neither lower nor upper
    (["hydra.sweeper.params=null"], "hydra.sweeper.params"),
    (["hydra.sweeper.params.init='choice(default'"], "hydra.sweeper.params.init"),
    (["hydra.sweeper.params.scheduler='interval(1, 0)'"], "hydra.sweeper.params.scheduler"),
    (["+hydra.sweeper.params.lr='tag(log, interval(0, 1))'"], "hydra.sweeper.params.lr"),
    (["+hydra.sweeper.params.optimizer_lr='interval(0.1, 1)'"], "hydra.sweeper.params"),
    (["~hydra.sweeper.params", "+hydra.sweeper.params={init: xavier_uniform}"],
     "hydra.sweeper.params"),  # nothing to search
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials"),
    (["+hydra.sweeper.n_trial=3"], "hydra.sweeper.n_trial"),
])
def test_bad_input_is_one_line_naming_the_key_before_any_trial(tmp_path, overrides, key):
    folder = tmp_path / "search"
    proc = run_cli("fmnist_lab.train", *search(folder, *overrides))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), proc.stderr
    assert not folder.exists()  # no sweep folder, no run folder, no study


@pytest.mark.slow
def test_a_storage_that_cannot_be_written_is_one_line_before_any_trial(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    folder = tmp_path / "search"
    proc = run_cli("fmnist_lab.train", *search(
        folder, f"hydra.sweeper.storage={blocker}/sub/optuna.journal"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra.sweeper.storage: "), proc.stderr
    assert not folder.exists() and not (blocker.parent / "sub").exists()


def small_study(folder: Path) -> None:
    """A finished search's study without training: 4 trials, 3 complete and 1 pruned."""
    folder.mkdir(parents=True, exist_ok=True)
    made = optuna.create_study(study_name=STUDY_NAME, direction="maximize",
                               storage=open_storage(folder / JOURNAL),
                               sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(4):
        trial = made.ask()
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1, log=True)
        trial.suggest_categorical("optimizer", ["sgd", "adamw"])
        trial.report(0.5 + 0.1 * i, 1)
        if i == 3:
            made.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            made.tell(trial, 0.8 + 0.01 * i + 0.001 * lr)


def test_a_study_is_read_without_torch(tmp_path):
    small_study(tmp_path)
    code = ("import sys; from fmnist_lab import search as s; "
            "st = s.load_studies(s.journal_of(sys.argv[1]))[0]; "
            "print(s.trial_counts(st)); print(sorted(s.param_importances(st))); "
            "print([(r['state'], r['value'], r['last_epoch']) for r in s.trial_table(st)]); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "'complete': 3, 'pruned': 1, 'fail': 0" in proc.stdout
    assert "['optimizer', 'optimizer.lr']" in proc.stdout
    assert "('complete', 0.8" in proc.stdout and "('pruned', 0.8, 1)]" in proc.stdout


def test_the_report_counts_pruned_trials_and_draws_them(tmp_path):
    small_study(tmp_path / "search")
    (tmp_path / "search" / "0_run").mkdir()
    (tmp_path / "search" / "0_run" / "results.json").write_text(json.dumps(fake_result(
        "optuna", {"optimizer.lr": 0.01}, 0)))
    report = write_report(tmp_path)
    md = report.markdown.read_text()
    section = md.split("## optuna search: `fmnist_lab` (search/optuna.journal)", 1)[1]
    assert "4 trials: 3 complete, 1 pruned. Pruned trials stopped early and are never" in section
    assert "Best last-epoch validation accuracy 82.00 % in trial 2" in section
    assert "| `optimizer.lr` |" in section and "fANOVA" in section
    for name in ("search_optuna_parallel_coordinates.png", "search_optuna_epochs.png"):
        assert tmp_path / name in report.figures
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_the_dashboard_serves_a_search_over_http(tmp_path):
    small_study(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_lab.search", "dashboard",
                             str(tmp_path), "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        address = re.search(r"http://localhost:(\d+)/", line)
        assert address, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = f"http://127.0.0.1:{address.group(1)}"
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert [s["study_name"] for s in studies] == [STUDY_NAME]
        with urllib.request.urlopen(f"{base}/api/studies/{studies[0]['study_id']}",
                                    timeout=10) as response:
            detail = json.load(response)
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3 + ["Pruned"]
    finally:
        proc.terminate()
        proc.wait(timeout=PATIENCE)


def test_the_dashboard_names_a_folder_without_a_search(tmp_path):
    proc = run_cli("fmnist_lab.search", "dashboard", str(tmp_path))
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: ") and "optuna.journal" in proc.stderr


def test_make_dashboard_runs_the_dashboard_on_the_folder():
    proc = subprocess.run(["make", "-n", "dashboard", "DIR=outputs/multirun/optuna/x",
                           "PORT=8090"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"-m fmnist_lab.search dashboard outputs/multirun/optuna/x --port 8090",
                     proc.stdout)


def test_make_search_retrains_a_best_configuration_both_searches_found_once():
    # The best runs reuse what either search trained: a configuration both found trains its
    # seeds once (the runs sharing it wait for the first, claim_config).
    proc = subprocess.run(["make", "-n", "-o", "setup", "search", "SEARCH_DIR=outputs/s"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "hydra.sweep.dir=outputs/s/@/best reuse_runs_in=outputs/s " in proc.stdout


def test_two_searches_side_by_side_say_what_pruning_saved(tmp_path):
    """A pruned and an unpruned search (made up, as make search lays them out): wall time from
    their runs' clocks, trials by state, and each best configuration retrained at 3 seeds."""
    def search_record(folder: Path, pruner: str, minutes: int, val: float) -> None:
        small_study(folder)
        (folder / "multirun.yaml").write_text(
            f"hydra:\n  sweeper:\n    pruner:\n      _target_: optuna.pruners.{pruner}\n")
        trial = fake_result("optuna", {"optimizer.lr": 0.01}, 0)
        trial["history"][-1]["ended"] = "2026-12-04T10:00:00+00:00"
        trial["seconds"] = {"test": 0.0, "total": minutes * 60.0}
        (folder / "0_run").mkdir()
        (folder / "0_run" / "results.json").write_text(json.dumps(trial))
        for seed in (0, 1, 2):
            best = fake_result("best", {"optimizer.lr": 0.05}, seed, val_acc=val + 0.001 * seed,
                               test_acc=0.9)
            (folder / "best" / f"{seed}_seed={seed}").mkdir(parents=True)
            (folder / "best" / f"{seed}_seed={seed}" / "results.json").write_text(
                json.dumps(best))

    search_record(tmp_path / "median", "MedianPruner", 30, 0.880)
    search_record(tmp_path / "none", "NopPruner", 60, 0.881)
    md = write_report(tmp_path).markdown.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `median` | MedianPruner | 30 min | 3 / 1 |")
    assert rows[1].startswith("| `none` | NopPruner | 1 h 00 min | 3 / 1 |")
    assert "88.10 ± 0.10 %" in rows[0] and "90.00 ± 0.00 % (seeds 0, 1, 2)" in rows[0]
    epochs = len(fake_result("optuna", {"optimizer.lr": 0.01}, 0)["history"])
    assert [row.split("|")[5].strip() for row in rows[:2]] == [str(epochs)] * 2
    assert "Pruning saved 50 % of the wall time and 0 % of the epochs" in md
    assert "earns its place" in md


@pytest.mark.slow  # reads both searches' journals and computes their importances
def test_the_committed_search_record_regenerates_its_report_exactly(tmp_path):
    record = ROOT / "results" / "search"
    copy = tmp_path / "search"
    shutil.copytree(record, copy)
    (copy / "report.md").unlink()
    write_report(copy)
    assert (copy / "report.md").read_text() == (record / "report.md").read_text()
    journals = sorted(p.relative_to(record).as_posix() for p in record.rglob(JOURNAL))
    assert journals == ["median/optuna.journal", "none/optuna.journal"]
