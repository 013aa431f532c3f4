"""Workers sharing one optuna study (hydra_plugins/fmnist_lab_sweepers/optuna.py): who may count
and ask at a time, and how a worker that died is found.

- A journal file (one machine): a lock file beside it serialises counting and asking, and a
  RUNNING trial whose owner, the host and pid recorded on it, is gone was left by a dead worker.
- A database (`postgresql://...`, workers on several nodes, whose pids cannot be checked from
  another node): a PostgreSQL advisory lock serialises them, and optuna's heartbeat finds the
  dead: every worker records one for its running trials every `heartbeat_interval` seconds,
  and a trial whose heartbeat is older than `grace_period` is failed and asked again by the
  first worker that looks, under the lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def owner() -> dict[str, Any]:
    """This process, as trials record their owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _started(os.getpid())}


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), where /proc tells: with the pid,
    what tells a process from a later one that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, ValueError):
        return False
    now = _started(int(pid))
    return started is None or now is None or now == started


def open_storage(spec: str, heartbeat_interval: int | None = None,
                 grace_period: int | None = None) -> Any:
    """The study's storage (fmnist_lab.search.open_storage); a database's with optuna's
    heartbeat (`find_dead` asks its stale trials again)."""
    from fmnist_lab.search import open_storage as plain

    if "://" not in spec or not heartbeat_interval:
        return plain(spec)
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return plain(spec, heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def has_heartbeat(storage: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


@contextlib.contextmanager
def worker_lock(journal: Path | None, storage: Any, study_name: str) -> Iterator[None]:
    """Held while a worker counts and asks: an exclusive lock on a file beside the journal, or
    PostgreSQL's advisory lock on the study; both end with the process that holds them."""
    if journal is not None:
        import fcntl

        with open(f"{journal}.workers.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        yield  # another database: its transactions alone (a search may ask a trial too many)
        return
    from sqlalchemy import text

    key = zlib.crc32(f"fmnist_lab optuna {study_name}".encode())
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def find_dead(study: Any, abandon: Callable[[Any, Any], None]) -> None:
    """RUNNING trials left by a worker that died: a journal's by host and pid (this host's
    only), a database's by optuna's heartbeat (its callback asks them again)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    if has_heartbeat(storage):
        # optuna's fail_stale_trials, but the trial is marked interrupted before it is failed
        # (a finished trial takes no more attributes); under the worker lock, one worker does.
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            trial = storage.get_trial(trial_id)
            attrs = trial.user_attrs
            print(f"optuna: trial {trial.number}'s worker, pid {attrs.get('pid')} on "
                  f"{attrs.get('host')}, stopped its heartbeat: asking its parameters again")
            with contextlib.suppress(UpdateFinishedTrialError):  # it finished meanwhile
                abandon(study, trial)
        return
    me = owner()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != me["host"] or attrs.get("pid") is None:
            continue  # another machine's, or not yet ours to judge
        if (attrs["pid"], attrs.get("pid_started")) == (me["pid"], me["pid_started"]):
            continue
        if not alive(attrs["pid"], attrs.get("pid_started")):
            print(f"optuna: trial {trial.number} was left running by process "
                  f"{attrs['pid']}, which is gone: asking its parameters again")
            abandon(study, trial)


class Heartbeat:
    """Records a heartbeat for `trial_ids` every interval while inside (a database with a
    heartbeat; elsewhere nothing): the trials of the batch this worker runs."""

    def __init__(self, storage: Any, trial_ids: list[int]) -> None:
        self.storage = storage
        self.trial_ids = trial_ids
        self.stop = threading.Event()

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while True:
            for trial_id in self.trial_ids:
                with contextlib.suppress(Exception):  # a trial told meanwhile; a lost connection
                    self.storage.record_heartbeat(trial_id)
            if self.stop.wait(interval):
                return

    def __enter__(self) -> Heartbeat:
        if has_heartbeat(self.storage):
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
