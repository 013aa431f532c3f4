"""On a real one-node SLURM cluster and a real PostgreSQL server (`make cluster`, started here
when it is not up): a sweep of SLURM jobs, a time limit's signal and requeue, a preemption
(`scontrol requeue`), a cancelled job, an optuna search whose trials are jobs, workers of one
SLURM array sharing a study in PostgreSQL with one of them killed, make study on the cluster,
and bad input. Every job a test submits carries the test's own name and is cancelled at its end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import PATIENCE, ROOT, TINY, run_cli

pytestmark = pytest.mark.slow

# Seconds a run: the default network on 500 images, one thread a job.
QUICK = [*TINY, "data.train_size=500", "data.val_size=300", "data.test_size=200"]
TRIAL = [*TINY, "model=three_fc", "data.train_size=300", "data.val_size=300",
         "data.test_size=200", "trainer.max_epochs=2", "hydra/sweeper/pruner=nop"]


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The local cluster's partition and storage URL, starting it (once for all pytest workers)
    where it is not up. Only a machine where it cannot be started for want of root skips the
    tests; as root (CI's machines) a failure to start is the tests' failure."""
    with open("/tmp/fmnist-lab-cluster-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["scripts/cluster.sh", "start"], cwd=ROOT, capture_output=True,
                              text=True, timeout=PATIENCE)
    if proc.returncode != 0:
        message = f"make cluster failed: {proc.stderr.strip() or proc.stdout.strip()}"
        if os.geteuid() == 0 or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {"partition": re.search(r"partition '([^']+)'", proc.stdout)[1],
            "storage": re.search(r"hydra\.sweeper\.storage=(\S+)", proc.stdout)[1]}


@pytest.fixture
def name(cluster) -> str:
    """A SLURM job name of this test's own; its jobs are cancelled at the end."""
    job_name = f"t{uuid.uuid4().hex[:10]}"
    yield job_name
    subprocess.run(["scancel", "--full", f"--name={job_name}"], capture_output=True)


def slurm(job_name: str, *more: str) -> list[str]:
    return ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", f"hydra.launcher.name={job_name}", *more]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def runs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and re.match(r"\d+_", p.name))


def job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))


def queue(job_name: str) -> list[tuple[str, str]]:
    """(job id, state) of the test's jobs that SLURM still lists as not ended."""
    out = subprocess.run(["squeue", "-h", "-r", f"--name={job_name}", "-o", "%i %T"],
                         capture_output=True, text=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fmnist_lab.train", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_for(check, proc: subprocess.Popen | None, log: Path | None, what: str,
             jobs: str | None = None):
    """check()'s first true value; fails when `proc` exits first, or the SLURM jobs named
    `jobs` have all ended."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}:\n{log.read_text()}")
        if jobs is not None and not queue(jobs):
            raise AssertionError(f"the jobs {jobs} ended before {what}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {PATIENCE} s")


def test_a_sweep_runs_a_slurm_job_per_run_and_reports(tmp_path, name):
    sweep = tmp_path / "sweep"
    proc = run_cli("fmnist_lab.train", "-m", *QUICK, "model=three_fc", "seed=0,1",
                   f"hydra.sweep.dir={sweep}", *slurm(name, "hydra.launcher.cpus_per_task=2"))
    assert proc.returncode == 0, proc.stderr
    assert "sweep " in proc.stdout and "2 completed" in proc.stdout
    output = proc.stdout + proc.stderr
    assert "Bypassing sacct error" not in output and "Traceback" not in output
    assert [r.name for r in runs(sweep)] == ["0_seed=0", "1_seed=1"]
    jobs = {p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)}
    assert len(jobs) == 2  # an array task a run: "12_0", "12_1"
    for run in runs(sweep):
        result = results(run)
        assert result["status"] == "completed" and result["test_acc"] > 0
        assert result["machine"]["torch_threads"] == 2  # the job's CPUs
    logs = job_logs(sweep)
    assert "srun" not in logs and "Warning" not in logs, logs  # quiet where nothing is wrong
    report = run_cli("fmnist_lab.report", str(sweep))
    assert report.returncode == 0, report.stderr
    assert "| (all runs) | 2 | 2 completed |" in (sweep / "report.md").read_text()


# A one-minute limit, signalled 10 s before it. SLURM checks time limits every 30 s and sends
# the signal up to 30 s early: between 20 s and 50 s after the job starts. The run has its first
# checkpoint well before 20 s (5 s under the whole suite's load) and is still training at 50 s
# on a machine twice as fast as these (120 epochs, about 1 s each here).
TIME_LIMIT = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=10"]
LONG = [*QUICK, "trainer.max_epochs=120", "seed=0"]


def test_a_time_limit_requeues_the_job_and_it_resumes(tmp_path, name):
    """Signalled before its 1-minute limit, the job is requeued by SLURM, and the requeued job
    resumes from the checkpoint; given more time (scontrol update, once it is requeued) it
    finishes, with one results.json whose epochs add up."""
    sweep = tmp_path / "sweep"
    log = tmp_path / "sweep.log"
    proc = start(["-m", *LONG, f"hydra.sweep.dir={sweep}",
                  *slurm(name, *TIME_LIMIT, "hydra.launcher.max_num_timeout=1")], log)
    try:
        wait_for(lambda: "Requeued job" in job_logs(sweep) if sweep.exists() else False,
                 proc, log, "a requeue")
        [(job_id, _)] = queue(name)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=20"], check=True)
        assert proc.wait(timeout=PATIENCE) == 0, log.read_text()
    finally:
        proc.kill()
    logs = job_logs(sweep)
    assert "this job is timed-out" in logs and "resuming from" in logs
    [run] = runs(sweep)
    result = results(run)
    assert result["status"] == "completed"
    assert 1 <= result["resumed_after_epoch"] < 120
    assert [e["epoch"] for e in result["history"]] == list(range(1, 121))


def test_a_run_out_of_requeues_fails_saying_why_and_the_sweep_resumes_it(tmp_path, name):
    sweep = tmp_path / "sweep"
    args = ["-m", *LONG, f"hydra.sweep.dir={sweep}"]
    first = run_cli("fmnist_lab.train", *args,
                    *slurm(name, *TIME_LIMIT, "hydra.launcher.max_num_timeout=0"))
    assert first.returncode != 0
    [run] = runs(sweep)
    failed = results(run)
    assert failed["status"] == "failed"
    assert "reached its time limit (hydra.launcher.timeout_min=1) with no requeue left " \
           "(hydra.launcher.max_num_timeout=0)" in failed["error"]
    assert "  failed: " in first.stderr and "Traceback" not in first.stderr  # the summary
    assert (run / "checkpoints" / "last.ckpt").is_file()

    again = run_cli("fmnist_lab.train", *args, *slurm(name, "hydra.launcher.timeout_min=20"))
    assert again.returncode == 0, again.stderr
    result = results(run)
    assert result["status"] == "completed" and result["resumed_after_epoch"] >= 1
    assert [e["epoch"] for e in result["history"]] == list(range(1, 121))


def test_a_preempted_job_is_requeued_by_slurm_and_resumes(tmp_path, name):
    """`scontrol requeue` of a running job, as a cluster preempts one: killed (SIGTERM, SIGKILL
    after KillWait, no warning signal), requeued, and the new start resumes."""
    sweep = tmp_path / "sweep"
    log = tmp_path / "sweep.log"
    proc = start(["-m", *QUICK, "trainer.max_epochs=20", "seed=0", f"hydra.sweep.dir={sweep}",
                  *slurm(name)], log)
    try:
        last = wait_for(lambda: next(sweep.glob("*/checkpoints/last.ckpt"), None)
                        if sweep.exists() else None, proc, log, "a checkpoint")
        [(job_id, state)] = queue(name)
        assert state == "RUNNING"
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        assert proc.wait(timeout=PATIENCE) == 0, log.read_text()
    finally:
        proc.kill()
    result = results(last.parent.parent)
    assert result["status"] == "completed" and result["resumed_after_epoch"] >= 1
    assert [e["epoch"] for e in result["history"]] == list(range(1, 21))
    assert "this job is" not in job_logs(sweep)  # no signal reached submitit's handler


def test_a_cancelled_job_leaves_no_complete_result_and_the_sweep_resumes(tmp_path, name):
    sweep = tmp_path / "sweep"
    log = tmp_path / "sweep.log"
    args = ["-m", *QUICK, "trainer.max_epochs=20", "seed=0", f"hydra.sweep.dir={sweep}"]
    proc = start([*args, *slurm(name)], log)
    try:
        last = wait_for(lambda: next(sweep.glob("*/checkpoints/last.ckpt"), None)
                        if sweep.exists() else None, proc, log, "a checkpoint")
        [(job_id, _)] = queue(name)
        subprocess.run(["scancel", job_id], check=True)
        assert proc.wait(timeout=PATIENCE) == 1, log.read_text()
    finally:
        proc.kill()
    output = log.read_text()
    run = last.parent.parent
    assert f"error: run {run.name}: SLURM job {job_id} was cancelled (scancel) before the run " \
           "finished; rerun the same command to resume it" in output
    assert "Traceback" not in output
    cut = results(run)
    assert cut["status"] == "failed" and "history" not in cut and "test_acc" not in cut

    again = run_cli("fmnist_lab.train", *args, *slurm(name))
    assert again.returncode == 0, again.stderr
    result = results(run)
    assert result["status"] == "completed" and result["resumed_after_epoch"] >= 1
    assert [e["epoch"] for e in result["history"]] == list(range(1, 21))


def test_an_optuna_search_runs_its_trials_as_slurm_jobs(tmp_path, name):
    optuna = pytest.importorskip("optuna")
    from fmnist_lab.search import JOURNAL, open_storage

    sweep = tmp_path / "search"
    proc = run_cli("fmnist_lab.train", "hparams_search=optuna", *TRIAL,
                   "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                   f"hydra.sweep.dir={sweep}", *slurm(name))
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="fmnist_lab", storage=open_storage(sweep / JOURNAL))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(list(t.intermediate_values) == [1, 2] for t in study.trials)  # from the jobs
    assert [r.name.split("_")[0] for r in runs(sweep)] == ["0", "1"]
    assert len({p.name for p in (sweep / ".submitit").iterdir()
                if re.fullmatch(r"\d+_\d+", p.name)}) == 2


def test_workers_of_a_slurm_array_share_a_study_in_postgresql_and_retry_a_killed_ones_trial(
        tmp_path, name, cluster):
    """Three workers, one SLURM array, one study in PostgreSQL: one is killed (SIGKILL) while
    its trial trains; its heartbeat stops, another worker fails that trial and runs it again
    from its checkpoint, once; the search has n_trials complete trials, none run twice."""
    optuna = pytest.importorskip("optuna")
    from fmnist_lab.search import open_storage

    study_name = f"workers_{name}"
    sweep = tmp_path / "search"
    command = " ".join([
        sys.executable, "-m", "fmnist_lab.train", "hparams_search=optuna", *QUICK,
        "trainer.max_epochs=12", "num_threads=1", "hydra/sweeper/pruner=nop",
        "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={cluster['storage']}",
        f"hydra.sweeper.study_name={study_name}", "hydra.sweeper.heartbeat_interval=2",
        "hydra.sweeper.grace_period=12", f"hydra.sweep.dir={sweep}"])
    storage = open_storage(cluster["storage"])
    try:
        subprocess.run(["sbatch", "--parsable", "--array=0-2", f"--job-name={name}",
                        "--cpus-per-task=1", "--mem=1G", "--time=20",
                        f"--output={tmp_path}/worker_%a.log", f"--wrap=exec {command}"],
                       cwd=ROOT, check=True, capture_output=True, text=True)

        def trial_in_training():
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
            except KeyError:
                return None
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if next(sweep.glob(f"{t.user_attrs.get('job')}_*/checkpoints/last.ckpt"), None):
                    return t
            return None

        killed = wait_for(trial_in_training, None, None, "a trial with a checkpoint", jobs=name)
        os.kill(killed.user_attrs["pid"], signal.SIGKILL)
        wait_for(lambda: not queue(name), None, None, "the workers' end")
        study = optuna.load_study(study_name=study_name, storage=storage)
        trials = study.trials
    finally:
        subprocess.run(["scancel", "--full", f"--name={name}"], capture_output=True)
        try:
            optuna.delete_study(study_name=study_name, storage=storage)
        except KeyError:
            pass
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("worker_*.log")))
    assert "Traceback" not in logs, logs
    assert f"optuna: trial {killed.number}'s worker, pid {killed.user_attrs['pid']} on " in logs
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)
    [cut] = [t for t in trials if t.user_attrs.get("interrupted")]
    assert cut.number == killed.number
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.params == killed.params and retry.user_attrs["pid"] != killed.user_attrs["pid"]
    folders = runs(sweep)
    assert len(folders) == 4  # a folder a trial: none ran twice
    assert sorted(t.user_attrs["run_dir"] for t in counted) == [f.name for f in folders]
    resumed = results(sweep / retry.user_attrs["run_dir"])
    assert retry.user_attrs["run_dir"].startswith(f"{killed.user_attrs['job']}_")
    assert resumed["status"] == "completed" and resumed["resumed_after_epoch"] >= 1
    assert [e["epoch"] for e in resumed["history"]] == list(range(1, 13))


def test_make_study_on_the_cluster_trains_a_shared_configuration_once(tmp_path, name):
    """Two experiments side by side whose grids are the same four runs: each submits its jobs,
    every configuration trains once and the other experiment reuses it."""
    args = " ".join(["model=three_fc", "data.train_size=300", "data.val_size=300",
                     "data.test_size=200", "trainer.max_epochs=1",
                     "optimizer.lr=0.01,0.1", "data.batch_size=64,128",
                     *slurm(name)[1:]])
    make = ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "data", "study",
            "LAUNCHER=slurm_cpu", f"STUDY_DIR={tmp_path}", "SEEDS=0",
            "EXPERIMENTS=learning_rate batch_size", f"ARGS={args}"]
    proc = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {p.parent: json.loads(p.read_text()) for p in tmp_path.rglob("results.json")}
    assert len(found) == 8 and all(r["status"] == "completed" for r in found.values())
    trained = [p for p, r in found.items() if not r.get("reused_from")]
    assert len(trained) == 4  # every configuration once, in one experiment or the other
    assert len({found[p]["run_key"] for p in trained}) == 4
    assert all((p / ".." / ".submitit").is_dir() for p in trained)  # they ran as SLURM jobs
    assert (tmp_path / "report.md").is_file()


def test_make_budget_and_make_tasks_on_the_cluster(tmp_path, name):
    """The other record targets submit their runs the same way: a step budget's runs (exactly
    their steps, as SLURM jobs) and a task's one-at-a-time sweep, each with its report. Their
    grids are cut to two learning rates and two one-at-a-time sweeps: every run is a job that
    imports torch, seconds of CPU each, and 12 jobs show what 25 would."""
    tiny = ["data.val_size=300", "data.test_size=200", *slurm(name)[1:]]
    two_rates = ["optimizer.lr=0.01,0.3", *tiny]  # replaces the grid of five
    two_sweeps = ["trainer.max_epochs=1", "~hydra.sweeper.one_at_a_time.init",
                  "~hydra.sweeper.one_at_a_time.transforms", *tiny[2:]]
    common = ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "data",
              "LAUNCHER=slurm_cpu"]
    budget = subprocess.run([*common, "budget", f"BUDGET_DIR={tmp_path / 'budget'}",
                             "BUDGET_TASKS=fmnist_1k", "BUDGET_STEPS=16 8", "BUDGET_SEEDS=0",
                             f"TASKS_DIR={tmp_path / 'no_tasks'}", f"ARGS={' '.join(two_rates)}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE)
    assert budget.returncode == 0, budget.stderr[-3000:]
    found = [json.loads(p.read_text()) for p in (tmp_path / "budget").rglob("results.json")]
    assert len(found) == 4 and all(r["status"] in ("completed", "diverged") for r in found)
    assert sorted({r["config"]["trainer"]["max_steps"] for r in found}) == [8, 16]
    assert all(r["history"][-1]["step"] == r["config"]["trainer"]["max_steps"]
               for r in found if r["status"] == "completed")
    assert len(list((tmp_path / "budget").rglob(".submitit"))) == 2  # a sweep each, as jobs
    assert "## Data or steps?" in (tmp_path / "budget" / "report.md").read_text()

    tasks = subprocess.run([*common, "tasks", f"TASKS_DIR={tmp_path / 'tasks'}",
                            "TASK_ORDER=digits", "TASK_SEEDS=0", "CONTROL_SEEDS=",
                            f"ARGS={' '.join(two_sweeps)}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE)
    assert tasks.returncode == 0, tasks.stderr[-3000:]
    found = list((tmp_path / "tasks" / "digits" / "seed_0").rglob("results.json"))
    assert len(found) == 8  # five learning rates, three more batch sizes
    assert (tmp_path / "tasks" / "digits" / "seed_0" / ".submitit").is_dir()
    assert "## The seed's hypothesis, tested" in (tmp_path / "tasks" / "report.md").read_text()


@pytest.mark.parametrize(("override", "key"), [
    ("hydra.launcher.partition=nosuchpartition", "hydra.launcher.partition"),
    ("hydra.launcher.cpus_per_task=512", "hydra.launcher.cpus_per_task"),
    ("hydra.launcher.mem_gb=100000", "hydra.launcher.mem_gb"),
])
def test_what_the_cluster_cannot_give_is_one_line_before_any_job(tmp_path, name, override, key):
    sweep = tmp_path / "sweep"
    proc = run_cli("fmnist_lab.train", "-m", *QUICK, "seed=0,1", f"hydra.sweep.dir={sweep}",
                   *slurm(name, override))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), proc.stderr
    assert "is not allowed" in lines[0]
    assert not sweep.exists() and not queue(name)


@pytest.mark.parametrize("wrong", ["host", "password", "database"])
def test_a_database_that_cannot_be_reached_is_one_line_before_any_trial(tmp_path, cluster,
                                                                         wrong):
    url = cluster["storage"]
    url = {"host": url.replace("@localhost", "@nosuchhost.invalid"),
           "password": re.sub(r":[^:@/]+@", ":wrong@", url),
           "database": url.rsplit("/", 1)[0] + "/nosuchdatabase"}[wrong]
    sweep = tmp_path / "search"
    proc = run_cli("fmnist_lab.train", "hparams_search=optuna", *TRIAL,
                   f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: hydra.sweeper.storage: postgresql://") \
        and "cannot be reached" in lines[0]
    assert ":wrong@" not in lines[0]  # the password is not printed
    assert {"host": "nosuchhost", "password": "password authentication failed",
            "database": 'database "nosuchdatabase" does not exist'}[wrong] in lines[0]
    assert not sweep.exists()
