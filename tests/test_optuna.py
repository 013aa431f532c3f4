"""hparams_search=optuna over the new keys: a search that is started again continues its
study (kept in the sweep folder) instead of starting from trial 0; the report reads it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fmnist_lab.report import write_report
from tests.conftest import TINY, run_cli
from tests.test_report import fake_result

pytestmark = pytest.mark.slow  # every test here runs the command line

optuna = pytest.importorskip("optuna")
FAST = [*TINY, "model=three_fc", "data.train_size=300", "data.test_size=200"]


def trials(folder) -> list:
    return optuna.load_study(study_name="fmnist_lab", storage=storage(folder)).get_trials()


def storage(folder):
    # optuna 2.x under SQLAlchemy 2 needs autocommit (see hydra_plugins/fmnist_lab_optuna).
    return optuna.storages.RDBStorage(f"sqlite:///{folder}/optuna.db",
                                      engine_kwargs={"isolation_level": "AUTOCOMMIT"})


def test_an_optuna_search_started_again_continues_its_study(tmp_path):
    search = ["hparams_search=optuna", *FAST, f"hydra.sweep.dir={tmp_path}"]
    first = run_cli("fmnist_lab.train", *search, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr
    before = trials(tmp_path)
    assert len(before) == 2
    # The search space covers the new keys.
    assert {"optimizer", "optimizer.lr", "optimizer.weight_decay", "scheduler",
            "loss.label_smoothing", "model.dropout", "transforms"} <= before[0].params.keys()

    again = run_cli("fmnist_lab.train", *search, "hydra.sweeper.n_trials=3")
    assert again.returncode == 0, again.stderr
    after = trials(tmp_path)
    assert len(after) == 3 and all(t.state.name == "COMPLETE" for t in after)
    assert [t.params for t in after[:2]] == [t.params for t in before]
    assert after[2].params not in [t.params for t in before]  # a new trial, not trial 0 again
    folders = sorted(p.name.split("_", 1)[0] for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["0", "1", "2"]  # job numbers go on after the study's trials

    report = write_report(tmp_path)
    md = report.markdown.read_text()
    assert "## optuna search" in md and "3 trials" in md
    assert (tmp_path / "optuna_parallel_coordinates.png") in report.figures
    try:
        import sklearn  # noqa: F401  optuna's importance evaluator needs it
    except ImportError:
        assert "needs scikit-learn" in md
    else:
        assert "| parameter | importance |" in md


def test_the_report_reads_an_optuna_study_without_torch(tmp_path):
    study = optuna.create_study(study_name="fmnist_lab", direction="maximize",
                                storage=storage(tmp_path))
    study.optimize(lambda t: t.suggest_float("optimizer.lr", 1e-4, 1, log=True), n_trials=3)
    run = tmp_path / "0_x"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(fake_result("optuna", {"optimizer.lr": 0.1})))
    code = ("import sys; from pathlib import Path; from fmnist_lab.report import write_report; "
            f"write_report(Path({str(tmp_path)!r})); assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "## optuna search" in (tmp_path / "report.md").read_text()
