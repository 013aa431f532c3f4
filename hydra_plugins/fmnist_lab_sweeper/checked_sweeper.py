"""fmnist-lab's grid sweeper. Hydra loads sweepers only from the `hydra_plugins` package."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from fmnist_lab.schema import ConfigError, check_config


class CheckedSweeper(BasicSweeper):
    """Hydra's basic grid sweeper, plus `check_config` on every job before any job runs."""

    def sweep(self, arguments: list[str]) -> Any:
        self._checked = False
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if not self._checked:  # all batches at once, before the first launch
            self._checked = True
            for overrides in (job for b in self.overrides for job in b):
                loader = self.hydra_context.config_loader
                cfg = loader.load_sweep_config(self.config, list(overrides))
                try:
                    check_config(cfg)
                except ConfigError as e:
                    sys.exit(f"error: {e} (sweep job: {' '.join(overrides)}); nothing was run")
        super().validate_batch_is_legal(batch)
