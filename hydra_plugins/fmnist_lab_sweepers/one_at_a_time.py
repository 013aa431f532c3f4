"""`hydra/sweeper=one_at_a_time`: Hydra's basic sweeper, plus one setting moved at a time.

(Here, not in fmnist_lab/, because Hydra takes plugins only from the hydra_plugins package.)
"""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override


class OneAtATimeSweeper(BasicSweeper):
    """Hydra's basic sweeper, plus one setting moved at a time: `one_at_a_time` maps keys to
    values (`optimizer.lr: 0.001,0.01,0.1`); every point of the grid (`params` and the command
    line) runs once per value of each key, the other keys at the grid's values. A job whose
    composed config and seed another job already has (the value every list shares, the
    baseline) runs once. What the seed study's sweeps do, on any number of tasks and seeds."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 one_at_a_time: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.one_at_a_time = one_at_a_time or {}

    def split_arguments(self, overrides: list[Override],
                        max_batch_size: int | None) -> list[list[list[str]]]:
        # What BasicSweeper.sweep launches: the list CheckSweepConfigs checked.
        from fmnist_lab.sweep import sweep_jobs  # Hydra imports plugins at every start-up

        return list(self.split_overrides_to_chunks(sweep_jobs(self.config), max_batch_size))
