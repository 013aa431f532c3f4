"""Shared fixtures: configs composed the way `python -m fmnist_lab.train` composes them, the
real data files, the command line, and reading the report's tables back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# pytest-xdist's workers share the cores: each worker, and each process it starts, takes its
# share of threads. OpenMP threads that outnumber the cores spin against each other (the
# tiny 5-fold sweep took over 10 minutes instead of one beside a training job). Set before
# torch is imported, which reads it once.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fmnist_lab.sources import FILES, find_data_root  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A few hundred real images and one epoch: seconds on the CPU, well above chance.
TINY = [
    "data.train_size=600",
    "data.val_size=500",
    "data.test_size=1000",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def compose_config(config_name: str, *overrides: str, **kwargs) -> DictConfig:
    """conf/<config_name>.yaml composed with `overrides`, as its command composes it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), **kwargs)


def make_cfg(*overrides: str) -> DictConfig:
    """A training run's config: TINY, then `overrides`."""
    return compose_config("config", *TINY, *overrides)


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def data_files() -> dict[str, Path]:
    """The real data set's four IDX files, by stem, wherever setup put them (Debian's
    package, torchvision's download, $FMNIST_DATA): the gzipped one where there is one."""
    root = find_data_root()
    return {stem: next(p for p in (root / f"{stem}.gz", root / stem) if p.is_file())
            for stem in FILES.values()}


# How long a test waits for what it is about (a file, a line of output, a process's exit): a
# ceiling only, generous, so that no verdict depends on how fast the machine is that day (a
# machine twice as slow, or busy training beside the suite, still passes).
PATIENCE = 900

CLOCKS = ("seconds", "ended")  # what differs between two runs of the same config and seed


def without_clocks(result: dict) -> list[dict]:
    """A run's history with the epochs' timings left out: what a rerun must reproduce."""
    return [{k: v for k, v in e.items() if k not in CLOCKS} for e in result["history"]]


def run_cli(module: str, *args: str, cwd: Path = ROOT, timeout: int = PATIENCE,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` as a user would, capturing its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def table(markdown: str, section: str) -> dict[str, list[str]]:
    """The first table under `## section...`: {first cell: cells}, header under "header"."""
    text = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {"header": rows[0], **{r[0]: r for r in rows[2:]}}


def column(rows: dict[str, list[str]], label: str, name: str) -> str:
    return rows[label][rows["header"].index(name)]


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    """A made-up learning-rate sweep (tests/fakes.py): two seeds of lr 0.001, 0.01, 0.1; lr 1
    diverges in epoch 2 for both."""
    from tests.fakes import lr_sweep_folder

    return lr_sweep_folder(tmp_path)
