"""What each config key means to a run's identity and to the readers of runs: one home.

- BOOKKEEPING: where a run is written, how it prints, how fast it goes: never part of what it
  learned, never "swept" in a report.
- SPEED_SWITCHES: switches that change speed and not what is learned (NHWC layout, compile),
  which the study recorded in its run keys: a run key counts them at the value those runs had.
- IMPLIED / IMPLIED_CHOICES: keys and groups added after runs were recorded, with the value
  that does what the code did before they existed: at that value a key is left out of a run's
  identity, and a recorded run without it reads as having it.
- LAUNCH_GROUPS: groups that say how runs were launched, not what they learned.

- `swept_keys_declared` / `constant_keys`: which keys a sweep varies and which it pins, read off
  its config (or its `multirun.yaml`) the way Hydra's sweepers read it.

No torch or Lightning here, and Hydra only inside the functions that parse a sweep: the
report, results.py, the dashboard and sweep.py all import this module.
"""

from __future__ import annotations

from typing import Any

BOOKKEEPING = frozenset({
    "name", "seed", "num_threads", "reuse_runs_in", "divergence_check_every", "data.root",
    "data.download", "data.eval_batch_size", "data.group_batches",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
})

SPEED_SWITCHES: dict[str, Any] = {"data.channels_last": False, "compile": False}

IMPLIED: dict[str, Any] = {
    # Regularisation in the networks: off, as the seed's networks had none.
    "model.dropout": 0.0,
    "model.norm": "none",
    # The optimizer became a config group; its default, sgd, is the SGD all runs
    # used, built from the same lr, momentum and weight_decay keys as before.
    "optimizer._target_": "torch.optim.SGD",
    "optimizer._partial_": True,
    # scheduler=none adds no key. Label smoothing 0 is plain cross-entropy.
    "loss.label_smoothing": 0.0,
    # The task axis (data=, fmnist_lab/sources.py): Fashion-MNIST as it is.
    "data.source": "fashion_mnist",
    "data.classes": None,
    "data.label_noise": 0.0,
    "data.resolution": None,
    # A run's length in epochs, validated after each: no step budget (fmnist_lab.data.StepBudget).
    "trainer.max_steps": -1,
    "trainer.val_check_interval": None,
}
IMPLIED_CHOICES: dict[str, str] = {"optimizer": "sgd", "scheduler": "none",
                                   "data": "fashion_mnist"}

LAUNCH_GROUPS = frozenset({"experiment", "hparams_search", "debug"})

# The values a study varies: TensorBoard's HParams columns (any other key is a column where
# the command line sets it), and what a report's table says it held fixed.
STUDY_KEYS = ("optimizer.lr", "optimizer.momentum", "optimizer.weight_decay",
              "data.batch_size", "trainer.max_epochs", "trainer.max_steps", "seed",
              "data.num_folds", "data.fold")
# What a report's sweep section says it held fixed, in this order, where every run shares it
# (and has it: AdamW has no momentum). The keys of SEED_RECIPE are named only where a sweep
# holds them away from the seed's recipe (an optuna best configuration's optimizer, schedule,
# label smoothing and dropout); at the recipe they would say what every seed-study run did.
HELD_FIXED = ("task", "model", "model.dropout", "model.norm", "init", "transforms", "optimizer",
              "optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "scheduler",
              "loss.label_smoothing", "data.batch_size", "data.train_size",
              "trainer.max_epochs", "trainer.max_steps")
SEED_RECIPE: dict[str, Any] = {
    "model.dropout": 0.0, "model.norm": "none", "optimizer": "sgd",
    "optimizer.weight_decay": 0.0, "scheduler": "none", "loss.label_smoothing": 0.0,
    "trainer.max_steps": -1}
# Where a run is written, how fast it runs and what it prints: never a column.
PLUMBING = (BOOKKEEPING - {"seed"}) | set(SPEED_SWITCHES) | {
    "trainer.accelerator", "trainer.devices", "trainer.deterministic", "trainer.benchmark",
    "trainer.num_sanity_val_steps"}


def identity(flat_config: dict[str, Any]) -> dict[str, Any]:
    """What identifies a trained run, from its flattened config: bookkeeping left out, speed
    switches at the study's values, implied keys at their implied value left out. With
    data=idx the folder is the data set, so data.root counts there."""
    ident = {k: v for k, v in flat_config.items()
             if k not in BOOKKEEPING and not (k in IMPLIED and IMPLIED[k] == v)}
    ident.update((k, v) for k, v in SPEED_SWITCHES.items() if k in flat_config)
    if flat_config.get("data.source") == "idx":
        ident["data.root"] = flat_config.get("data.root")
    ident["seed"] = flat_config.get("seed")
    return ident


def sweep_overrides(config: Any) -> list[Any]:
    """A sweep's overrides as Hydra parses them: the sweeper's params, the one-at-a-time
    lists (hydra_plugins.fmnist_lab_sweepers.one_at_a_time), then the command line's overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    sweeper = config.hydra.sweeper
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += [f"{k}={v}" for k, v in (sweeper.get("one_at_a_time") or {}).items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    return OverridesParser.create().parse_overrides(arguments)


def constant_keys(config: Any) -> list[str]:
    """The keys a sweep sets to one value for all its jobs (command line or sweeper params).

    A key given twice takes its last value, as the basic sweeper does: `seed=0` on the command
    line pins an experiment's `seed: 0,1,2`.
    """
    last = {o.key_or_group: o for o in sweep_overrides(config)}
    return sorted(k for k, o in last.items() if not o.is_sweep_override())


def swept_keys_declared(config: Any) -> list[str]:
    """The keys a sweep varies (several values, a range or a search interval), as its
    config or `multirun.yaml` declares them: known before all of its runs have finished."""
    last = {o.key_or_group: o for o in sweep_overrides(config)}
    return sorted(k for k, o in last.items() if o.is_sweep_override())
