"""What TensorBoard shows of a run: its curves first, and its row in HParams.

- `EpochLogger`: Lightning's TensorBoard logger with the epoch on the x axis (1, 2, ... as in
  results.json's history), or the optimizer step under a step budget, instead of a chart of
  Lightning's epoch counter.
- `CURVES`: the Custom Scalars layout: train and validation together, one chart for the loss,
  one for the accuracy.
- `log_hparams`: the run's row in the HParams tab (`hparams_row`): the config groups by the
  names the user chose (`model=three_fc`), the values a study varies, and the outcome read
  off the curves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2
from hydra.core.hydra_config import HydraConfig
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from fmnist_lab.keys import IMPLIED, IMPLIED_CHOICES, LAUNCH_GROUPS, PLUMBING, STUDY_KEYS
from fmnist_lab.results import flatten

# SummaryWriter.add_custom_scalars' format: {category: {chart: ["Multiline", [tag regexes]]}}.
CURVES = {"curves": {
    "loss (train, val)": ["Multiline", ["^train/loss$", "^val/loss$"]],
    "accuracy (train, val)": ["Multiline", ["^train/acc$", "^val/acc$"]],
}}

DIVERGED = "train/diverged"  # 1.0 when the loss became NaN or infinite, else 0.0
# HParams metrics, in the order of its columns. TensorBoard reads each as the last value of
# the scalar of that name: the last epoch's validation numbers, the final training loss.
METRICS = ("val/acc", "val/loss", "test/acc", "test/loss", "train/loss", DIVERGED)


_TYPES = {bool: api_pb2.DATA_TYPE_BOOL, int: api_pb2.DATA_TYPE_FLOAT64,
          float: api_pb2.DATA_TYPE_FLOAT64, str: api_pb2.DATA_TYPE_STRING}


class EpochLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, with the epoch as the x axis of every scalar; with
    `step_of` set (a step budget's run), the optimizer step it returns."""

    step_of: Callable[[], int] | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Lightning adds its 0-based `epoch` to every call; logged, it was TensorBoard's first
        # chart. As x: 1, 2, ... (test numbers, logged after fit counted its last epoch: N + 1).
        # Lightning's own step counts its batches, groups of optimizer steps here.
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if self.step_of is not None:
            step = self.step_of()
        elif epoch is not None:
            step = int(epoch) + 1
        super().log_metrics(metrics, step)


def override_key(override: str) -> str:
    """`+trainer.foo=1` -> `trainer.foo`; `model=three_fc` -> `model`."""
    return override.split("=", 1)[0].lstrip("+~")


def hparams_row(config: Mapping[str, Any], choices: Mapping[str, str],
            overrides: list[str]) -> dict[str, bool | float | str]:
    """A run's row in HParams: its config group choices by name, the values a study varies,
    and any other key its command line sets; plumbing and unset values left out."""
    values = flatten(dict(config))
    keys = [*STUDY_KEYS, *(override_key(o) for o in overrides)]
    if values.get("data.num_folds") is None:
        keys = [k for k in keys if k != "data.fold"]  # fold 0 of no split means nothing
    # Groups that launch runs, and trainer (one option): their choice tells no runs apart.
    row: dict[str, Any] = {g: c for g, c in choices.items()
                           if g not in LAUNCH_GROUPS | {"trainer"}}
    row.update((k, values[k]) for k in keys if k not in PLUMBING and values.get(k) is not None
               and values[k] != IMPLIED.get(k, ...) and values[k] != -1)  # -1: no limit
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in row.items()}


def swept_keys() -> set[str]:
    """In a Hydra run, the keys its folder is named by: in a sweep, those that differ between
    its jobs (`fmnist_lab.sweep.NameRunsByWhatVaries`); none outside Hydra."""
    if not HydraConfig.initialized():
        return set()
    hydra_cfg = HydraConfig.get()
    named = {override_key(o) for o in hydra_cfg.overrides.task}
    return named - set(hydra_cfg.job.config.override_dirname.exclude_keys)


def log_hparams(writer: SummaryWriter, result: Mapping[str, Any]) -> None:
    """Write the run's row of TensorBoard's HParams tab, from its results.json `result`.

    Written with the hparams plugin's own protos: Lightning's log_hyperparams lists every
    key in name order and takes metrics only as new scalars. TensorBoard shows the first five
    columns (those marked `differs` first, then by name), so the choices and the swept keys
    are marked. Every run of a sweep writes the same columns: TensorBoard takes one run's.
    """
    choices = result.get("choices") or {}
    row = hparams_row(result["config"], choices, result.get("overrides") or [])
    # The study's own groups and what the sweep varies; optimizer and scheduler when not
    # the seed's (sgd, none), so that the five columns shown hold the swept values.
    first = {"model", "init", "transforms"} | swept_keys() | {
        group for group, choice in choices.items() if IMPLIED_CHOICES.get(group, choice) != choice}
    history = result["history"]
    last = history[-1].get("step", len(history)) if history else 0  # its curves' last x
    writer.add_scalar(DIVERGED, float(result["status"] == "diverged"), last)
    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=k, type=_TYPES[type(v)], differs=k in first)
                      for k, v in row.items()],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in METRICS])
    start = plugin_data_pb2.SessionStartInfo(hparams={k: _value(v) for k, v in row.items()})
    # A run an optuna search pruned stopped as designed: not a failure, not a success.
    status = {"completed": api_pb2.STATUS_SUCCESS, "pruned": api_pb2.STATUS_UNKNOWN}.get(
        result["status"], api_pb2.STATUS_FAILURE)
    file_writer = writer._get_file_writer()  # as Lightning's log_hyperparams does
    for tag, data in ((metadata.EXPERIMENT_TAG, {"experiment": experiment}),
                      (metadata.SESSION_START_INFO_TAG, {"session_start_info": start}),
                      (metadata.SESSION_END_INFO_TAG,
                       {"session_end_info": plugin_data_pb2.SessionEndInfo(status=status)})):
        content = plugin_data_pb2.HParamsPluginData(**data)
        file_writer.add_summary(Summary(value=[Summary.Value(
            tag=tag, metadata=metadata.create_summary_metadata(content),
            tensor=metadata.NULL_TENSOR)]))
    writer.flush()


def _value(v: bool | float | str) -> struct_pb2.Value:
    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v)
    if isinstance(v, str):
        return struct_pb2.Value(string_value=v)
    return struct_pb2.Value(number_value=float(v))
