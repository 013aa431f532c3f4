"""A recorded run keeps its identity under newer code: every key added to the composed config
since the study was recorded leaves run_key unchanged at its default (results.IMPLIED)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from fmnist_lab.results import run_key
from tests.conftest import compose_config

# run_key of these configs as composed by the code the study was recorded with (commit
# 5d60c2f, before optimizer/scheduler groups, loss and model regularisation keys existed).
RECORDED_KEYS = {
    "": "26821de64d076cf0",
    "model=three_fc": "778d64e5bdae6ead",
    "optimizer.lr=0.1 data.batch_size=64": "d4a873212565138a",
    "init=kaiming_normal": "7628b1de00b27a2c",
    "transforms=rotation": "ae75f4d40d0c886f",
}


@pytest.mark.parametrize("overrides", RECORDED_KEYS)
def test_new_keys_at_their_defaults_leave_a_runs_identity_unchanged(overrides):
    cfg = compose_config("config", *overrides.split())
    assert run_key(OmegaConf.to_container(cfg, resolve=True)) == RECORDED_KEYS[overrides]


@pytest.mark.parametrize("change", ["model.dropout=0.25", "model.norm=batch",
                                    "trainer.max_steps=400"])
def test_a_new_key_away_from_its_default_is_another_run(change):
    cfg = compose_config("config", change)
    assert run_key(OmegaConf.to_container(cfg, resolve=True)) != RECORDED_KEYS[""]


def test_run_names_leave_out_only_what_keys_calls_bookkeeping_or_launching():
    """conf/config.yaml's override_dirname.exclude_keys (Hydra reads them there) name keys that
    never tell two runs apart: each must be bookkeeping or a launch group in fmnist_lab.keys,
    so the two lists cannot drift apart."""
    from fmnist_lab.keys import BOOKKEEPING, LAUNCH_GROUPS

    cfg = compose_config("config", return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert excluded - {"hydra.sweep.dir"} <= BOOKKEEPING | LAUNCH_GROUPS
