"""Checks on a composed config, run before anything trains.

Hydra already rejects unknown groups and keys with its own message; this catches values of
the wrong type or out of range, and keys added with `+` to a section that takes only its
own, and names the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from fmnist_lab.data import TaskDataModule
from fmnist_lab.models import NORMS, model_names
from fmnist_lab.sources import SOURCES


class ConfigError(ValueError):
    """A bad config value; the message is one line naming key, value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
        self.key = key


# (test of the value and the whole config, what is allowed)
Rule = tuple[Callable[[Any, DictConfig], bool], str]


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def int_at_least(low: int) -> Rule:
    return lambda v, c: is_int(v) and v >= low, f"an integer >= {low}"


BOOLEAN: Rule = (lambda v, c: isinstance(v, bool), "true or false")


def fraction(v: Any) -> bool:
    return is_number(v) and 0 <= v < 1


def probability(v: Any) -> bool:
    return is_number(v) and 0 <= v <= 1


def pair_within(v: Any, low: float, high: float) -> bool:
    """[a, b] with low < a <= b <= high."""
    pair = list(v) if isinstance(v, (list, tuple, ListConfig)) else []
    return (len(pair) == 2 and all(is_number(x) for x in pair)
            and low < pair[0] <= pair[1] <= high)


def optional_int_at_least(low: int) -> Rule:
    return lambda v, c: v is None or (is_int(v) and v >= low), f"null or an integer >= {low}"


def class_list(v: Any, c: DictConfig) -> bool:
    """null, or two or more distinct class ids."""
    if v is None:
        return True
    ids = list(v) if isinstance(v, (list, tuple, ListConfig)) else None
    return (ids is not None and len(ids) >= 2 and all(is_int(i) and i >= 0 for i in ids)
            and len(set(ids)) == len(ids))


def has_step_budget(c: DictConfig) -> bool:
    """Whether trainer.max_steps sets a step budget (an integer >= 1)."""
    steps = OmegaConf.select(c, "trainer.max_steps", default=None)
    return is_int(steps) and steps >= 1


def is_sgd(c: DictConfig) -> bool:
    return str(OmegaConf.select(c, "optimizer._target_", default="")).endswith(".SGD")


# key -> (test, what is allowed); a test sees the value and the whole config.
RULES: dict[str, Rule] = {
    "seed": int_at_least(0),
    "optimizer.lr": (lambda v, c: is_number(v) and v > 0, "a number > 0"),
    "optimizer.momentum": (
        lambda v, c: (is_number(v) and 0 <= v < 1) if is_sgd(c) else v is None,
        "a number in [0, 1) with optimizer=sgd, unset with other optimizers",
    ),
    "optimizer.weight_decay": (lambda v, c: is_number(v) and v >= 0, "a number >= 0"),
    "divergence_check_every": int_at_least(1),
    "data.source": (lambda v, c: v in SOURCES, " or ".join(SOURCES)),
    "data.root": (
        lambda v, c: isinstance(v, str) and v != "" if c.data.source == "idx"
        else v is None or isinstance(v, str),
        "a folder (required with data=idx), or null to look in the usual places",
    ),
    "data.download": BOOLEAN,
    "data.batch_size": int_at_least(1),
    "data.eval_batch_size": int_at_least(1),
    "data.train_size": optional_int_at_least(1),
    "data.val_size": int_at_least(1),
    "data.test_size": optional_int_at_least(1),
    "data.classes": (class_list, "null (all), or a list of two or more distinct class ids "
                                 "(integers >= 0), e.g. [0,2,4,6]"),
    "data.label_noise": (lambda v, c: fraction(v), "a fraction in [0, 1)"),
    "data.resolution": (
        lambda v, c: v is None or (is_int(v) and v >= 4),
        "null (native) or an integer from 4 up to the images' native size",
    ),
    "data.num_folds": (
        lambda v, c: v is None or (is_int(v) and v >= 2), "null (hold-out) or an integer >= 2"
    ),
    "data.fold": (
        lambda v, c: is_int(v) and (0 <= v < (c.data.num_folds or 1)),
        "an integer in [0, data.num_folds), and 0 when data.num_folds is null",
    ),
    "data.split_seed": int_at_least(0),
    "data.group_batches": int_at_least(1),
    "data.channels_last": BOOLEAN,
    "compile": BOOLEAN,
    # The module steps the optimizer itself (manual optimization, see fmnist_lab.module),
    # which Lightning's gradient clipping and accumulation do not support.
    "trainer.gradient_clip_val": (
        lambda v, c: v is None,
        "unset: the module steps the optimizer itself, where Lightning's clipping does not act"
    ),
    "trainer.accumulate_grad_batches": (
        lambda v, c: v is None or v == 1,
        "1: each batch is its own optimizer step; raise data.batch_size instead",
    ),
    # A run's length: epochs, or a step budget (trainer.max_steps, fmnist_lab.data.StepBudget).
    "trainer.max_steps": (lambda v, c: v == -1 or (is_int(v) and v >= 1),
                          "an integer >= 1 (a step budget: exactly that many optimizer "
                          "steps), or -1 for none"),
    "trainer.max_epochs": (
        lambda v, c: v in (None, -1) if has_step_budget(c) else is_int(v) and v >= 1,
        "an integer >= 1, or -1 (or null) with trainer.max_steps: a run's length is given "
        "in epochs or in steps, not both",
    ),
    "trainer.val_check_interval": (
        lambda v, c: v is None or (has_step_budget(c) and is_int(v)
                                   and 1 <= v <= c.trainer.max_steps),
        "null (every epoch; with trainer.max_steps, ten evenly spaced steps), or with "
        "trainer.max_steps a number of optimizer steps from 1 to trainer.max_steps",
    ),
    # Inputs are made float32 batch by batch inside the training step, where Lightning's
    # "-true" plugins cannot convert them; mixed precision autocasts them.
    "trainer.precision": (
        lambda v, c: str(v) in ("32", "32-true", "bf16-mixed", "16-mixed"),
        "32-true, bf16-mixed or 16-mixed",
    ),
    "reuse_runs_in": (
        lambda v, c: v is None or isinstance(v, str) or (
            isinstance(v, ListConfig) and len(v) > 0 and all(isinstance(p, str) for p in v)),
        "null, a folder, or a list of folders",
    ),
    # The transforms presets' dials (conf/transforms/, fmnist_lab/transforms.py): a key is
    # checked wherever a preset has it, including the values a preset would quietly ignore.
    "transforms.p": (lambda v, c: v is None or probability(v), "a probability in [0, 1]"),
    "transforms.flip": (lambda v, c: v is None or probability(v), "a probability in [0, 1]"),
    "transforms.erase": (lambda v, c: v is None or probability(v), "a probability in [0, 1]"),
    "transforms.brightness": (lambda v, c: v is None or (is_number(v) and v >= 0),
                              "a strength >= 0 (0: none)"),
    "transforms.contrast": (lambda v, c: v is None or (is_number(v) and v >= 0),
                            "a strength >= 0 (0: none)"),
    "transforms.jitter": (lambda v, c: v is None or (is_number(v) and v >= 0),
                          "a brightness and contrast strength >= 0 (0: none)"),
    "transforms.degrees": (lambda v, c: v is None or (is_number(v) and 0 <= v <= 180),
                           "an angle in degrees from 0 to 180"),
    "transforms.interpolation": (lambda v, c: v is None or v in ("nearest", "bilinear"),
                                 "nearest or bilinear"),
    "transforms.pad": (lambda v, c: v is None or (is_int(v) and 0 <= v <= 14),
                       "a shift in whole pixels from 0 to 14"),
    "transforms.translate": (lambda v, c: v is None or (is_int(v) and 0 <= v <= 14),
                             "a shift in whole pixels from 0 to 14 (0: none)"),
    "transforms.scale": (lambda v, c: v is None or pair_within(v, 0, 1),
                         "[low, high]: a share of the image's area, 0 < low <= high <= 1"),
    "transforms.ratio": (lambda v, c: v is None or pair_within(v, 0, math.inf),
                         "[low, high]: aspect ratios, 0 < low <= high"),
    "transforms.value": (lambda v, c: v is None or (is_number(v) and 0 <= v <= 1),
                         "a grey level in [0, 1] (0: black)"),
    "num_threads": (lambda v, c: v is None or (is_int(v) and v >= 1), "null or an integer >= 1"),
    # Regularisation and schedules. resnet18 has neither model key: unset is fine.
    "loss.label_smoothing": (lambda v, c: fraction(v), "a number in [0, 1)"),
    "model.dropout": (lambda v, c: v is None or fraction(v), "a number in [0, 1)"),
    "model.norm": (lambda v, c: v is None or v in NORMS, " or ".join(NORMS)),
    "scheduler.warmup": (lambda v, c: v is None or fraction(v),
                         "a fraction of the run's steps in [0, 1)"),
    "scheduler.pct_start": (lambda v, c: v is None or (is_number(v) and 0 < v < 1),
                            "a fraction of the run's steps in (0, 1)"),
    "scheduler.milestones": (
        lambda v, c: v is None or all(is_number(m) and 0 < m < 1 for m in v),
        "a list of fractions of the run's steps in (0, 1)",
    ),
}


# Trainer arguments that fmnist_lab.train sets itself (TensorBoard, checkpoints, atomic saves).
TRAINER_SET_BY_US = ("logger", "callbacks", "plugins")


def _check_trainer_keys(cfg: DictConfig) -> None:
    """`+trainer.max_epoch=2` would reach Trainer(...) and fail there with a TypeError, after
    the run's folder exists: name the key now, and the argument it most likely meant."""
    trainer = get_class("pytorch_lightning.Trainer")
    allowed = [p for p in inspect.signature(trainer).parameters if p != "self"]
    for key, value in cfg.trainer.items():
        if key in TRAINER_SET_BY_US:
            raise ConfigError(f"trainer.{key}", value, "set by fmnist_lab.train itself "
                              "(TensorBoard logger, checkpoint callback, atomic checkpoints)")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else \
                "see the arguments of pytorch_lightning.Trainer"
            raise ConfigError(f"trainer.{key}", value, f"no such argument of Trainer; {hint}")


def check_keys(cfg: DictConfig) -> None:
    """Raise ConfigError for a key that would become an unknown keyword argument, and so
    fail late with a TypeError: a key of `data` without a rule, of `optimizer` or
    `transforms` that its class does not take (`+optimizer.betas=[0.9,0.99]` is fine for
    adam), or of `trainer` that Lightning's Trainer does not take."""
    data_keys = [k.split(".", 1)[1] for k in RULES if k.startswith("data.")]
    optimizer = get_class(cfg.optimizer._target_)
    optimizer_keys = _keywords(optimizer, "params")
    augment = get_class(cfg.transforms._target_)
    augment_keys = _keywords(augment)
    for section, allowed, owner in (("data", data_keys, "data"),
                                    ("optimizer", optimizer_keys, optimizer.__name__),
                                    ("transforms", augment_keys, augment.__name__)):
        for key, value in cfg[section].items():
            if key not in allowed and key not in ("_target_", "_partial_"):
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no keys"
                raise ConfigError(f"{section}.{key}", value, f"no such key; {owner} {takes}")
    _check_trainer_keys(cfg)


def _keywords(cls: type, *besides: str) -> list[str]:
    """The keyword arguments `cls(...)` names (not *args, **kwargs), `besides` aside."""
    return [name for name, p in inspect.signature(cls).parameters.items()
            if name not in ("self", *besides)
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def check_rules(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Raise ConfigError for the first value that breaks one of `rules`."""
    for key, (test, allowed) in rules.items():
        value = OmegaConf.select(cfg, key, default=None)
        if not test(value, cfg):
            raise ConfigError(key, value, allowed)


def check_data(cfg: DictConfig) -> None:
    """Raise DataError where the data cannot be read (a missing or unreadable data.root), a
    key asks for what the data set does not have (a class id, a resolution above its native
    size), or a split comes out empty or without a class: before any run folder exists."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()}
    TaskDataModule(**data).split()


# The benchmark's and the comparison's own sections (conf/bench.yaml, conf/compare.yaml).
BENCH_METHODS = ("lightning", "bare", "raw", "seed")
BENCH_RULES: dict[str, Rule] = {
    "bench.warmup": int_at_least(1),
    "bench.steps": int_at_least(1),
    "bench.repeats": int_at_least(1),
    "bench.seed_workers": int_at_least(0),
    "bench.max_seconds": (lambda v, c: is_number(v) and v > 0, "a number > 0"),
    "bench.methods": (
        lambda v, c: OmegaConf.is_list(v) and len(v) > 0 and all(m in BENCH_METHODS for m in v),
        f"a non-empty list of {', '.join(BENCH_METHODS)}",
    ),
}


COMPARE_RULES: dict[str, Rule] = {
    "compare.num_images": (  # correlations need a few images
        lambda v, c: is_int(v) and 3 <= v <= 10_000,
        f"an integer from 3 to {10_000}",
    ),
    "compare.subset_seed": int_at_least(0),
    "compare.batch_size": int_at_least(1),
    "compare.imagenet_size": int_at_least(28),
}




def check_compare(cfg: DictConfig) -> None:
    """The comparison's networks: known models, one reference, a weights file that exists."""
    c = cfg.compare
    for role in ("reference", "candidate"):
        model = c[f"{role}_model"]
        if model is not None and model not in model_names():
            raise ConfigError(f"compare.{role}_model", model,
                              f"null or one of {', '.join(model_names())}")
    if c.reference is not None and c.reference_weights is not None:
        raise ConfigError("compare.reference_weights", c.reference_weights,
                          "null when compare.reference is given (one reference only)")
    if c.reference_weights is not None and not Path(c.reference_weights).is_file():
        raise ConfigError("compare.reference_weights", c.reference_weights,
                          "an existing torchvision ResNet-18 weights file (.pth)")


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError (or DataError) for the first key or value of a config that breaks a
    rule: every entry point's config (train, a sweep's jobs, bench, compare), checked once,
    before its run folder exists (fmnist_lab.sweep.CheckSweepConfigs calls it)."""
    check_keys(cfg)
    check_rules(cfg, RULES)
    if "bench" in cfg:
        check_rules(cfg, BENCH_RULES)
    if "compare" in cfg:
        check_rules(cfg, COMPARE_RULES)
        check_compare(cfg)
    if cfg.data.num_folds and cfg.data.train_size is not None:
        if cfg.data.train_size < cfg.data.num_folds * 10:
            raise ConfigError(
                "data.train_size", cfg.data.train_size,
                f"at least 10 images per fold ({cfg.data.num_folds * 10}) with data.num_folds",
            )
    check_data(cfg)
