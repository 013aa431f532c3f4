"""Faults that used to leave a run stuck, each caused for real: a damaged checkpoint."""

import json
from pathlib import Path

import pytest

from fmnist_lab.train import train
from tests.conftest import TINY, run_cli

QUICK = ["model=three_fc", "data.test_size=200", "num_threads=1"]
FAST = [*TINY, *QUICK]


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


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
