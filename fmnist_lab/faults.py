"""What keeps a run folder usable after a fault: rerunning the same command always goes on.

- `AtomicCheckpointIO` writes checkpoints beside their final name, then renames them: a
  power cut or a full disk mid-write leaves the previous checkpoint, never half a file; a
  signal that arrives meanwhile is handled once the checkpoint is in place.
- `checkpoint_to_resume` loads a run's checkpoints before it resumes from one, and sets a
  damaged one aside (renamed `*.damaged`, kept for a post-mortem) with one line.
- `hold_run` lets one process at a time train in a run folder (`run.lock`: pid and host).
- `claim_config` lets one process at a time train a config and seed below a study's folder:
  sweeps that run side by side and share a run train it once; the later one waits for it.
- `hold_gpu` gives each of the runs side by side on a machine with several GPUs its own.
- `stop_on_signals` turns Ctrl-C (SIGINT) and SIGTERM (a cluster's preemption) into
  `Interrupted`, which `fmnist_lab.train` reports with `progress_kept` and the command that
  resumes the run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger("fmnist_lab")

LOCK_FILE = "run.lock"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's own save writes to a temporary file in the system's temp folder and moves
    it over the checkpoint: a copy, not a rename, when that folder is on another disk. Here
    the temporary file sits beside the checkpoint, and a signal waits for the rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with signals_held():
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename, or a power cut can undo it
            os.replace(tmp, path)


# Ctrl-C, a scheduler's stop, submitit's preemption and time-limit signals.
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


@contextmanager
def signals_held() -> Iterator[None]:
    """Run the block before any handler of HELD_SIGNALS: one that ran inside torch.save (an
    Interrupted raised, submitit checkpointing for a requeue) broke the write, and the run
    was recorded as failed instead of stopped or requeued. Handled once the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs handlers in the main thread only, and only it may set them
        return
    held: list[int] = []
    previous = {}
    for signum in HELD_SIGNALS:
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # ignored stays ignored
            previous[signum] = signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)


def checkpoint_to_resume(folder: Path) -> Path | None:
    """The newest checkpoint in `folder` that loads: last.ckpt, else the `epoch=*.ckpt`
    that ModelCheckpoint keeps beside it; None when there is none (the run starts over)."""
    epoch_files = sorted(folder.glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime,
                         reverse=True)
    for path in [folder / "last.ckpt", *epoch_files]:
        if not path.is_file():
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=False)
            return path
        except Exception as e:  # whatever fails to load cannot be resumed from
            damaged = path.with_name(path.name + ".damaged")
            os.replace(path, damaged)
            reason = f"{type(e).__name__}: {str(e).split('. ')[0]}"  # torch adds a paragraph
            log.warning("%s is damaged (%s): set aside as %s", path, reason, damaged.name)
    return None


def progress_kept(folder: Path, unit: str = "epoch") -> int:
    """Epochs (unit "epoch") or optimizer steps ("global_step") finished in the checkpoint a
    rerun would resume from; 0 when there is none."""
    path = checkpoint_to_resume(folder)
    if path is None:
        return 0
    # mmap: the count without reading the weights. Lightning stores the last epoch's index.
    kept = torch.load(path, map_location="cpu", mmap=True, weights_only=False)[unit]
    return kept + 1 if unit == "epoch" else kept


class RunHeld(Exception):
    """Another process holds the run folder."""


def _this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", 0))}


# "host:pid" of a process known to have ended, whose locks may be taken over on any host: an
# optuna search retrying the trial of a worker its heartbeat found dead sets it for the retry.
ENDED_HOLDER_ENV = "FMNIST_LAB_ENDED_HOLDER"


def _gone(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether the lock's holder is known to have ended."""
    if f"{holder.get('host')}:{holder.get('pid')}" == os.environ.get(ENDED_HOLDER_ENV):
        return True
    if (holder.get("slurm_job") and holder["slurm_job"] == me["slurm_job"]
            and holder.get("slurm_restart", 0) < me["slurm_restart"]):
        return True  # an earlier attempt of this requeued SLURM job, maybe on another node
    if holder.get("host") != me["host"]:
        return False  # another machine's pids cannot be checked from here
    if holder.get("pid") == me["pid"]:
        return True  # a restarted container reuses pids: our own pid is no one else's
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def _read(lock: Path) -> dict[str, Any]:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _take(lock: Path, me: dict[str, Any]) -> None:
    tmp = lock.with_name(f".{lock.name}.{me['pid']}")
    tmp.write_text(json.dumps(me) + "\n")
    try:
        for _ in range(2):
            try:
                os.link(tmp, lock)  # creates the lock with its content, or fails if one exists
                return
            except FileExistsError:
                pass
            holder = _read(lock)  # {}: unreadable, so no process can be relying on it
            if holder and not _gone(holder, me):
                hint = "" if holder.get("host") == me["host"] else (
                    f"; if no process there is running it, delete {lock}")
                raise RunHeld(f"{lock.parent} is in use by {_describe(holder)}{hint}")
            log.warning("taking over %s: %s is no longer running", lock,
                        _describe(holder) if holder else "its process")
            lock.unlink(missing_ok=True)
        raise RunHeld(f"{lock.parent} was taken by another process just now")
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _holding(lock: Path, me: dict[str, Any]) -> Iterator[None]:
    try:
        yield
    finally:
        if _read(lock) == me:  # still ours
            lock.unlink()


@contextmanager
def hold_run(folder: Path) -> Iterator[None]:
    """Hold `folder` while inside; raises RunHeld naming the holder when a live process
    holds it. A lock whose process has ended (killed: no clean-up) is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = _this_process()
    _take(lock, me)
    with _holding(lock, me):
        yield


CLAIMS_DIR = ".claims"
CLAIM_POLL_S = 5.0
CLAIM_HEARTBEAT_S = 60.0
CLAIM_STALE_S = 600.0


def _refresh(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(CLAIM_HEARTBEAT_S):
        try:
            os.utime(lock)
        except OSError:
            return


@contextmanager
def claim_config(root: Path, key: str, folder: Path) -> Iterator[None]:
    """Hold the claim on the config and seed `key` (results.run_key) below `root` while
    inside. A process that reaches a claimed config waits until its holder ends, then goes
    on (and finds the finished run to reuse): sweeps that run side by side into one study
    and share a run (the default config) train it once.

    A claim's file is refreshed every CLAIM_HEARTBEAT_S: one from another machine (whose
    pid cannot be checked) left untouched for CLAIM_STALE_S belongs to a process that died.
    """
    lock = root / CLAIMS_DIR / f"{key}.lock"
    me = {**_this_process(), "folder": str(folder)}
    told = False
    while True:
        try:
            if time.time() - lock.stat().st_mtime > CLAIM_STALE_S:
                log.warning("taking over %s: untouched for %.0f s", lock, CLAIM_STALE_S)
                lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            _take(lock, me)
            break
        except FileNotFoundError:
            continue  # the folder was removed by a holder that just let go: make it again
        except RunHeld:
            if not told:
                holder = _read(lock)
                print(f"waiting for {_describe(holder)}, which trains the same config and "
                      f"seed in {holder.get('folder')}", flush=True)
                told = True
            time.sleep(CLAIM_POLL_S)
    stop = threading.Event()
    threading.Thread(target=_refresh, args=(lock, stop), daemon=True).start()
    try:
        with _holding(lock, me):
            yield
    finally:
        stop.set()
        try:
            lock.parent.rmdir()  # the last claim gone: leave no trace in the sweep's folder
        except OSError:
            pass  # other claims are held


GPU_LOCKS = Path(tempfile.gettempdir()) / f"fmnist_lab-gpus-{os.getuid()}"


@contextmanager
def hold_gpu(count: int, lock_dir: Path = GPU_LOCKS) -> Iterator[int]:
    """The index of one of `count` GPUs that no other run on this machine holds, held while
    inside: runs side by side (make study's sweeps, joblib's jobs, two terminals) each get
    their own. When every GPU is held, one is shared (pid mod count), with a warning."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    me = _this_process()
    for index in range(count):
        lock = lock_dir / f"gpu{index}.lock"
        try:
            _take(lock, me)
        except RunHeld:
            continue
        with _holding(lock, me):
            yield index
        return
    index = os.getpid() % count
    log.warning("all %d GPUs are held by other runs: sharing GPU %d", count, index)
    yield index


class Interrupted(BaseException):
    """SIGINT or SIGTERM. A BaseException, so no `except Exception` records it as a failed
    run; not a KeyboardInterrupt, which Lightning turns into a silent exit(1)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal killed


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise Interrupted on SIGINT and SIGTERM while inside. A signal someone else handles
    (submitit's requeue handlers) or ignores (a background job's SIGINT) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if not raised:  # once: a second Ctrl-C must not break the clean-up of the first
            raised.append(signum)
            raise Interrupted(signum)

    previous = {}
    for signum, default in ((signal.SIGINT, signal.default_int_handler),
                            (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is default:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
