"""What TensorBoard shows of a real sweep, read back through TensorBoard's own event loader and
the hparams and custom-scalars plugins' own handlers (what its server answers the browser)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from google.protobuf import json_format
from omegaconf import OmegaConf
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
)

from fmnist_lab.tensorboard_logging import METRICS, hparams_row
from tests.conftest import TINY, make_cfg, run_cli

# Constant overrides (TINY's and these) stay out of the names; lr=10 diverges.
SWEEP = [*TINY, "model=three_fc", "data.train_size=300", "data.test_size=200",
         "trainer.max_epochs=2", "optimizer.lr=0.05,10", "seed=0,1"]
NAMES = ["0_optimizer.lr=0.05,seed=0", "1_optimizer.lr=0.05,seed=1",
         "2_optimizer.lr=10,seed=0", "3_optimizer.lr=10,seed=1"]
PLUMBING = {"compile", "data.download", "data.eval_batch_size", "data.group_batches",
            "num_threads", "data.root", "trainer.enable_progress_bar", "trainer.accelerator"}


class Board(NamedTuple):
    """TensorBoard's view of a logdir, as its server builds it."""

    scalars: dict  # run -> tag -> [ScalarDatum]
    experiment: dict  # the HParams tab's columns (GetExperiment's answer, as JSON)
    sessions: dict  # run -> its HParams row (ListSessionGroups' answer, as JSON)
    layout: dict  # the Custom Scalars tab's layout


def _sweep_command(sweep_dir: Path):
    return run_cli("fmnist_lab.train", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    proc = _sweep_command(sweep_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def board(sweep) -> Board:
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(sweep))
    tb = base_plugin.TBContext(data_provider=provider, multiplexer=multiplexer,
                               logdir=str(sweep))
    ctx, hp = context.RequestContext(), backend_context.Context(tb)
    # The requests TensorBoard's HParams tab sends (it asks for up to 1000 columns).
    experiment = get_experiment.Handler(
        ctx, hp, "", api_pb2.GetExperimentRequest(hparams_limit=1000)).run()
    request = api_pb2.ListSessionGroupsRequest(
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE],
        start_index=0, slice_size=100)
    groups = list_session_groups.Handler(ctx, hp, "", request).run()
    sessions = {s["name"]: {**g, "status": s["status"]}
                for g in json_format.MessageToDict(groups)["sessionGroups"]
                for s in g["sessions"]}
    return Board(
        scalars=provider.read_scalars(ctx, experiment_id="", plugin_name="scalars",
                                      downsample=1000),
        experiment=json_format.MessageToDict(experiment),
        sessions=sessions,
        layout=json.loads(CustomScalarsPlugin(tb).layout_impl(ctx, "")),
    )


def _results(sweep: Path, name: str) -> dict:
    return json.loads((sweep / name / "results.json").read_text())


def _metrics(session: dict) -> dict[str, float]:
    # Proto JSON writes 0 as nothing and NaN as "NaN".
    return {m["name"]["tag"]: float(m.get("value", 0.0)) for m in session["metricValues"]}


@pytest.mark.slow  # a real sweep through the command line
def test_sweep_runs_are_named_by_what_varies(sweep):
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == NAMES
    overrides = _results(sweep, NAMES[3])["overrides"]
    assert "data.train_size=300" in overrides  # what all runs share is still recorded


@pytest.mark.slow  # a real sweep through the command line
def test_the_same_command_finds_the_same_runs(sweep):
    proc = _sweep_command(sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("skipping") == len(NAMES)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == NAMES


@pytest.mark.slow  # a real sweep through the command line
def test_tensorboards_run_list_shows_the_short_names(board):
    assert sorted(board.scalars) == NAMES  # the run's folder name, nothing after it


@pytest.mark.slow  # a real sweep through the command line
def test_curves_are_drawn_over_epochs_with_no_epoch_chart(board):
    for run, tags in board.scalars.items():
        assert "epoch" not in tags, run
    completed = board.scalars[NAMES[0]]
    for tag in ("train/loss", "val/loss", "train/acc", "val/acc"):
        assert [d.step for d in completed[tag]] == [1, 2], tag


@pytest.mark.slow  # a real sweep through the command line
def test_hparams_columns_are_the_choices_and_the_studys_values(board):
    columns = [h["name"] for h in board.experiment["hparamInfos"]]
    # The HParams tab shows the first five: the choices and what the sweep varies.
    assert columns[:5] == ["init", "model", "optimizer.lr", "seed", "transforms"]
    assert {"optimizer.momentum", "optimizer.weight_decay", "data.batch_size",
            "trainer.max_epochs", "data.train_size"} <= set(columns)
    assert not PLUMBING & set(columns)
    assert not [c for c in columns if "_target_" in c or c.startswith(("experiment", "debug"))]
    assert "data.fold" not in columns  # no k-fold split here
    rows = {run: s["hparams"] for run, s in board.sessions.items()}
    assert sorted(rows) == NAMES
    assert {r["model"] for r in rows.values()} == {"three_fc"}
    assert {r["transforms"] for r in rows.values()} == {"standard"}
    assert sorted((r["optimizer.lr"], r["seed"]) for r in rows.values()) == [
        (0.05, 0), (0.05, 1), (10, 0), (10, 1)]
    assert {r["trainer.max_epochs"] for r in rows.values()} == {2}


@pytest.mark.slow  # a real sweep through the command line
def test_hparams_metrics_are_the_runs_outcome(board, sweep):
    assert [m["name"]["tag"] for m in board.experiment["metricInfos"]] == list(METRICS)
    for name in NAMES:
        session, result = board.sessions[name], _results(sweep, name)
        metrics, last = _metrics(session), result["history"][-1]
        assert metrics["train/diverged"] == (result["status"] == "diverged"), name
        assert metrics["train/loss"] == pytest.approx(last["train_loss"], nan_ok=True)
        assert metrics["val/acc"] == pytest.approx(last["val_acc"])
        if result["status"] == "completed":
            assert session["status"] == "STATUS_SUCCESS"
            assert metrics["val/loss"] == pytest.approx(last["val_loss"])
            assert metrics["test/acc"] == pytest.approx(result["test_acc"])
            assert metrics["test/loss"] == pytest.approx(result["test_loss"])
        else:
            assert session["status"] == "STATUS_FAILURE"
            assert "test/acc" not in metrics
    assert {_results(sweep, n)["status"] for n in NAMES} == {"completed", "diverged"}


@pytest.mark.slow  # a real sweep through the command line
def test_custom_scalars_lay_out_loss_and_accuracy_each_train_and_val_together(board):
    [category] = board.layout["category"]
    charts = {c["title"]: c["multiline"]["tag"] for c in category["chart"]}
    assert list(charts) == ["loss (train, val)", "accuracy (train, val)"]
    for run, tags in board.scalars.items():  # each chart draws each run's two curves
        for title, metric in (("loss (train, val)", "loss"), ("accuracy (train, val)", "acc")):
            matched = sorted(t for t in tags if any(re.search(r, t) for r in charts[title]))
            assert matched == [f"train/{metric}", f"val/{metric}"], (run, title)


def test_hparams_of_a_config_by_name_without_plumbing():
    cfg = make_cfg("model=three_conv", "init=xavier_normal", "data.num_folds=5", "data.fold=2",
                   "num_threads=1", "compile=false", "+trainer.min_epochs=1")
    choices = {"model": "three_conv", "init": "xavier_normal", "transforms": "hflip",
               "optimizer": "sgd", "data": "fashion_mnist", "trainer": "default",
               "experiment": "learning_rate", "debug": "fast"}
    overrides = ["model=three_conv", "num_threads=1", "compile=false", "data.train_size=600",
                 "+trainer.min_epochs=1", "trainer.enable_progress_bar=false"]
    row = hparams_row(OmegaConf.to_container(cfg, resolve=True), choices, overrides)
    assert {k: row[k] for k in ("model", "init", "transforms", "optimizer")} == {
        "model": "three_conv", "init": "xavier_normal", "transforms": "hflip",
        "optimizer": "sgd"}
    assert row["data.num_folds"] == 5 and row["data.fold"] == 2
    assert row["data.train_size"] == 600 and row["trainer.min_epochs"] == 1
    assert row["optimizer.lr"] == 0.01 and row["seed"] == 0
    assert not PLUMBING & set(row)
    assert not {"trainer", "experiment", "debug"} & set(row)
    assert row["data"] == "fashion_mnist"  # data= is a task now: digits, idx, ...
