"""What keeps a run folder usable after a fault: rerunning the same command always goes on.

- `AtomicCheckpointIO` writes checkpoints beside their final name, then renames them: a
  power cut or a full disk mid-write leaves the previous checkpoint, never half a file.
- `checkpoint_to_resume` loads a run's checkpoints before it resumes from one, and sets a
  damaged one aside (renamed `*.damaged`, kept for a post-mortem) with one line.
- `stop_on_signals` turns Ctrl-C (SIGINT) and SIGTERM (a cluster's preemption) into
  `Interrupted`, which `fmnist_lab.train` reports with `epochs_kept` and the command that
  resumes the run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger("fmnist_lab")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's own save writes to a temporary file in the system's temp folder and moves
    it over the checkpoint: a copy, not a rename, when that folder is on another disk. Here
    the temporary file sits beside the checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, or a power cut can undo it
        os.replace(tmp, path)


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


def epochs_kept(folder: Path) -> int:
    """Epochs finished in the checkpoint a rerun would resume from; 0 when there is none."""
    path = checkpoint_to_resume(folder)
    if path is None:
        return 0
    # mmap: the epoch without reading the weights. Lightning stores the last epoch's index.
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"] + 1


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
