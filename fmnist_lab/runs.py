"""What keeps a run folder usable after a fault: rerunning the same command always goes on.

- `AtomicCheckpointIO` writes checkpoints beside their final name, then renames them: a
  power cut or a full disk mid-write leaves the previous checkpoint, never half a file.
- `checkpoint_to_resume` loads a run's checkpoints before it resumes from one, and sets a
  damaged one aside (renamed `*.damaged`, kept for a post-mortem) with one line.
"""

from __future__ import annotations

import logging
import os
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
