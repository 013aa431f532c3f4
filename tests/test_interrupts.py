"""Faults that used to leave a run stuck, each caused for real: a damaged checkpoint, Ctrl-C
and SIGTERM sent to a training process, two processes on one run folder, a lock left by a
killed process, a preempted submitit job."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fmnist_lab.faults import LOCK_FILE, AtomicCheckpointIO, RunHeld, hold_run
from fmnist_lab.run import train
from tests.conftest import PATIENCE, ROOT, TINY, run_cli

pytestmark = pytest.mark.slow  # every test here runs the command line

QUICK = ["model=three_fc", "data.test_size=200", "num_threads=1"]
FAST = [*TINY, *QUICK]
HOST = socket.gethostname()
# This checkout's code from any working folder, wherever the venv's editable install points.
CODE = {"PYTHONPATH": str(ROOT)}


@pytest.fixture
def start():
    """start(args, log): `python -m fmnist_lab.train args` in the background as a terminal
    starts it: its own process group, Ctrl-C not ignored (a script's background job inherits
    SIG_IGN). Whatever still runs at the end of the test is killed."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
        started.append(subprocess.Popen(
            [sys.executable, "-m", "fmnist_lab.train", *args], cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **CODE}, stdout=log.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, log: Path) -> Path:
    """The first file below `folder` matching `pattern`, once `proc` has written it."""
    deadline = time.time() + PATIENCE
    while time.time() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} after {PATIENCE} s:\n{log.read_text()}")


def resume_command(stderr: str) -> list[str]:
    """The command an interrupted run printed, run with this interpreter."""
    line = next(line for line in stderr.splitlines() if line.startswith("interrupted by"))
    command = shlex.split(line.split("To resume: ")[1])
    assert command[:3] == ["python", "-m", "fmnist_lab.train"]
    return command[3:]


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_a_signal_during_a_checkpoint_write_waits_for_the_checkpoint(tmp_path):
    # A preemption (SIGUSR2) that arrived inside torch.save broke the write: the run was
    # recorded as failed instead of requeued. Now the handler runs after the rename.
    seen: list[str] = []
    def handler(signum, frame):
        where = "in place" if (tmp_path / "last.ckpt").is_file() else "missing"
        seen.append(f"handled with last.ckpt {where}")

    previous = signal.signal(signal.SIGUSR2, handler)
    real_save = torch.save

    def save_and_get_signalled(obj, f):
        os.kill(os.getpid(), signal.SIGUSR2)
        real_save(obj, f)
        seen.append("written")

    try:
        torch.save = save_and_get_signalled
        AtomicCheckpointIO().save_checkpoint({"weights": torch.ones(3)}, tmp_path / "last.ckpt")
    finally:
        torch.save = real_save
        signal.signal(signal.SIGUSR2, previous)
    assert seen == ["written", "handled with last.ckpt in place"]
    assert signal.getsignal(signal.SIGUSR2) is previous
    assert torch.load(tmp_path / "last.ckpt")["weights"].sum() == 3


@pytest.mark.parametrize("damage", ["truncated last.ckpt", "every checkpoint empty"])
def test_a_damaged_checkpoint_is_set_aside_and_the_rerun_goes_on(tmp_path, cfg_factory, damage):
    # A run that stopped after epoch 1: last.ckpt and the epoch file beside it, no results.
    first = train(cfg_factory(*QUICK), tmp_path)
    (tmp_path / "results.json").unlink()
    checkpoints = tmp_path / "checkpoints"
    last, [epoch_file] = checkpoints / "last.ckpt", list(checkpoints.glob("epoch=*.ckpt"))
    if damage == "truncated last.ckpt":  # a power cut while writing it
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    else:  # a full disk
        last.write_bytes(b"")
        epoch_file.write_bytes(b"")

    again = run_cli("fmnist_lab.train", *FAST, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert "Traceback" not in output
    assert (checkpoints / "last.ckpt.damaged").exists()
    damaged_lines = [line for line in output.splitlines() if "is damaged" in line]
    assert "last.ckpt is damaged" in damaged_lines[0]
    assert "set aside as last.ckpt.damaged" in damaged_lines[0]
    history = results(tmp_path)["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    if damage == "truncated last.ckpt":
        assert "PytorchStreamReader failed reading zip archive" in damaged_lines[0]
        assert len(damaged_lines) == 1
        assert f"resuming from {epoch_file}" in output
        assert history[0] == first["history"][0]  # epoch 1 restored, timing included
    else:
        assert "EOFError" in damaged_lines[0] and len(damaged_lines) == 2
        assert (checkpoints / f"{epoch_file.name}.damaged").exists()
        assert "resuming from" not in output  # started over


# Both leave the run folder to Hydra's default, a new one named by the time: the command in
# the message must name it, or rerunning it would start over in another folder.
def test_ctrl_c_stops_a_run_with_what_is_kept_and_the_command_that_resumes(tmp_path, start):
    args = [*FAST, "trainer.max_epochs=10"]
    log = tmp_path / "first.log"
    proc = start(args, log, cwd=tmp_path)
    last = wait_for("outputs/runs/train/*/checkpoints/last.ckpt", tmp_path, proc, log)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert proc.wait(timeout=PATIENCE) == 130, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("interrupted by")]
    run_dir = last.parent.parent
    kept = torch.load(last, weights_only=False)["epoch"] + 1
    epochs = "epoch 1 is" if kept == 1 else f"epochs 1-{kept} are"
    assert line.startswith(f"interrupted by SIGINT in epoch {kept + 1} of 10: {epochs} kept in "
                           f"{run_dir / 'checkpoints'}. To resume: ")
    assert resume_command(output) == [*args, f"hydra.run.dir={run_dir}"]
    assert not (run_dir / LOCK_FILE).exists()

    again = run_cli("fmnist_lab.train", *resume_command(output), cwd=tmp_path, env=CODE)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    assert [e["epoch"] for e in results(run_dir)["history"]] == list(range(1, 11))


def test_ctrl_c_in_a_step_budget_says_which_steps_are_kept(tmp_path, start):
    args = [*FAST, "trainer.max_epochs=-1", "trainer.max_steps=400",
            "trainer.val_check_interval=20"]
    log = tmp_path / "first.log"
    proc = start(args, log, cwd=tmp_path)
    last = wait_for("outputs/runs/train/*/checkpoints/last.ckpt", tmp_path, proc, log)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=PATIENCE) == 130, log.read_text()
    output = log.read_text()
    [line] = [line for line in output.splitlines() if line.startswith("interrupted by")]
    kept = torch.load(last, weights_only=False)["global_step"]
    assert kept % 20 == 0 and line.startswith(
        f"interrupted by SIGINT in step {kept + 1} of 400: steps 1-{kept} are kept in ")
    again = run_cli("fmnist_lab.train", *resume_command(output), cwd=tmp_path, env=CODE)
    assert again.returncode == 0, again.stderr
    run_dir = last.parent.parent
    assert [e["step"] for e in results(run_dir)["history"]] == list(range(20, 401, 20))


def test_sigterm_stops_a_sweep_naming_finished_runs_and_the_same_command_resumes(tmp_path, start):
    args = ["-m", *FAST, "trainer.max_epochs=1,10"]
    log = tmp_path / "first.log"
    proc = start(args, log, cwd=tmp_path)
    last = wait_for("outputs/multirun/train/*/1_*/checkpoints/last.ckpt", tmp_path, proc, log)
    proc.send_signal(signal.SIGTERM)  # what a scheduler does to preempt a job
    assert proc.wait(timeout=PATIENCE) == 143, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("interrupted by")]
    run_dir = last.parent.parent
    sweep = run_dir.parent.relative_to(tmp_path)
    assert line.startswith("interrupted by SIGTERM in run 1_trainer.max_epochs=10 in epoch ")
    assert f"finished runs in {sweep}: 0_trainer.max_epochs=1 (completed)" in output
    assert resume_command(output) == [*args, f"hydra.sweep.dir={sweep}"]

    again = run_cli("fmnist_lab.train", *resume_command(output), cwd=tmp_path, env=CODE)
    assert again.returncode == 0, again.stderr
    assert "skipping 0_trainer.max_epochs=1: already completed" in again.stdout
    assert "resuming from" in again.stdout + again.stderr
    assert [e["epoch"] for e in results(run_dir)["history"]] == list(range(1, 11))


def test_ctrl_c_as_a_sweep_moves_to_its_next_run_is_one_line_and_130(tmp_path, start):
    # The moment the first run's result lands, the process is finishing that run, in Hydra
    # starting the next, or in the next run's set-up: wherever the signal lands, one line.
    args = ["-m", *FAST, "trainer.max_epochs=1", "seed=0,1,2"]
    log = tmp_path / "sweep.log"
    proc = start(args, log, cwd=tmp_path)
    wait_for("outputs/multirun/train/*/0_seed=0/results.json", tmp_path, proc, log)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=PATIENCE) == 130, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output and "interrupted" in output, output


def test_a_second_process_skips_a_held_run_in_a_sweep_and_refuses_it_alone(tmp_path, start):
    sweep = ["-m", *FAST, "trainer.max_epochs=1000", f"hydra.sweep.dir={tmp_path}/sweep"]
    holder = start(sweep, tmp_path / "holder.log")
    lock = wait_for(f"sweep/*/{LOCK_FILE}", tmp_path, holder, tmp_path / "holder.log")
    run_dir = lock.parent
    held = f"{run_dir} is in use by pid {holder.pid} on {HOST} since "
    # The same sweep started again, and a single run pointed at the held folder.
    second = start(sweep, tmp_path / "second.log")
    # Quoted: a sweep run's folder name holds Hydra's own `=` and `,`.
    alone = run_cli("fmnist_lab.train", *FAST, f"hydra.run.dir='{run_dir}'")
    assert alone.returncode != 0
    assert alone.stderr.startswith(f"error: {held}"), alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    second_log = tmp_path / "second.log"
    assert second.wait(timeout=PATIENCE) == 0, second_log.read_text()
    assert f"skipping {run_dir.name}: {held}" in second_log.read_text(), second_log.read_text()
    assert holder.poll() is None, (tmp_path / "holder.log").read_text()
    assert not (run_dir / "results.json").exists()

    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=PATIENCE) == 143, (tmp_path / "holder.log").read_text()
    assert not lock.exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, start):
    args = [*FAST, "trainer.max_epochs=10", f"hydra.run.dir={tmp_path}/run"]
    log = tmp_path / "killed.log"
    killed = start(args, log)
    wait_for("run/checkpoints/last.ckpt", tmp_path, killed, log)
    os.killpg(killed.pid, signal.SIGKILL)  # no clean-up: the lock stays behind
    killed.wait()
    lock = tmp_path / "run" / LOCK_FILE
    assert json.loads(lock.read_text())["pid"] == killed.pid

    again = run_cli("fmnist_lab.train", *args)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    [line] = [line for line in output.splitlines() if "taking over" in line]
    assert f"taking over {lock}: pid {killed.pid} on {HOST} since " in line
    assert line.endswith("is no longer running")
    assert "resuming from" in output
    assert [e["epoch"] for e in results(tmp_path / "run")["history"]] == list(range(1, 11))
    assert not lock.exists()


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_attempt(tmp_path, monkeypatch):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": 4242, "host": "node-7", "since": "2026-01-01 00:00:00",
                                "slurm_job": "77", "slurm_restart": 0}))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    # Another machine's process cannot be checked from here: the message says what to do.
    with pytest.raises(RunHeld, match=f"in use by pid 4242 on node-7 .*; if no process there "
                                      f"is running it, delete {lock}"):
        with hold_run(tmp_path):
            pass
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued: SLURM counts restarts
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with hold_run(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_preempted_submitit_job_is_requeued_and_resumes(tmp_path, start):
    args = ["-m", "hydra/launcher=submitit_local", *FAST, "trainer.max_epochs=10",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    log = tmp_path / "launcher.log"
    launcher = start(args, log)
    last = wait_for("sweep/*/checkpoints/last.ckpt", tmp_path, launcher, log)
    run_dir = last.parent.parent
    job = json.loads((run_dir / LOCK_FILE).read_text())["pid"]  # the job process trains
    os.kill(job, signal.SIGUSR2)  # submitit's signal for a preemption or a near time limit
    assert launcher.wait(timeout=PATIENCE) == 0, log.read_text()
    job_logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in job_logs and "Requeued job" in job_logs
    assert "resuming from" in job_logs
    assert [e["epoch"] for e in results(run_dir)["history"]] == list(range(1, 11))
