"""The representation comparison: its statistics on hand-checked cases, then real runs.

ResNet-18 trains at only ~10 images/s on a small shared CPU, so the end-to-end runs use
a few dozen images and one epoch: the numbers mean nothing, the plumbing is what's tested.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torchvision

from fmnist_lab.compare import (
    CompareError,
    load_network,
    load_study_net,
    recognise_model,
    run_compare,
)
from fmnist_lab.models import build_model, model_names
from fmnist_lab.schema import ConfigError
from fmnist_lab.similarity import correlation_stats, linear_cka
from tests.conftest import compose_config, run_cli

TINY_COMPARE = [
    "data.train_size=50",
    "data.test_size=20",
    "data.batch_size=20",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "compare.num_images=60",
]
LAYER_FIELDS = {"network", "model", "layer", "units", "dead_units", "shape", "mean", "std",
                "offdiag_mean", "offdiag_std", "heatmap"}
LAYERS = {"reference.features", "candidate.features", "candidate.logits"}
PNG_MAGIC = b"\x89PNG"


def compare_cfg(*overrides: str):
    return compose_config("compare", *overrides)


# ---------------------------------------------------------------------------- linear CKA


def test_cka_of_identical_representations_is_one():
    x = np.random.default_rng(0).normal(size=(200, 12))
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    y = x @ rng.normal(size=(8, 6)) + 0.5 * rng.normal(size=(300, 6))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    base = linear_cka(x, y)
    assert 0.1 < base < 0.99
    assert linear_cka(x @ q, y) == pytest.approx(base)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base)
    assert linear_cka(x, x @ q * 5.0) == pytest.approx(1.0)


def test_cka_near_zero_for_independent_features():
    rng = np.random.default_rng(2)
    assert linear_cka(rng.normal(size=(5000, 20)), rng.normal(size=(5000, 20))) < 0.05


def test_cka_matches_the_kernel_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 4)) + rng.normal(size=(30, 1))
    h = np.eye(30) - 1 / 30  # centring matrix: HSIC(K, L) ~ tr(K H L H)
    kx, ky = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    expected = hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky))
    assert linear_cka(x, y) == pytest.approx(expected)


def test_cka_of_a_constant_representation_is_nan_not_an_error():
    assert np.isnan(linear_cka(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 2))))


# ---------------------------------------------------------------------------- correlations


def test_correlation_stats_match_a_hand_computed_case():
    # unit 0 rises, unit 1 is uncorrelated with it, unit 2 mirrors unit 0:
    # C = [[1, 0, -1], [0, 1, 0], [-1, 0, 1]]
    acts = np.array([[1, 1, -1], [2, -1, -2], [3, -1, -3], [4, 1, -4]], dtype=float)
    corr, s = correlation_stats(acts)
    np.testing.assert_allclose(corr, [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], atol=1e-12)
    assert s["shape"] == [3, 3] and s["units"] == 3 and s["dead_units"] == 0
    assert s["mean"] == pytest.approx(1 / 9)                 # (3 - 2) / 9 entries
    assert s["std"] == pytest.approx(np.sqrt(44) / 9)        # sqrt(5/9 - 1/81)
    assert s["offdiag_mean"] == pytest.approx(-1 / 3)        # two -1s among six
    assert s["offdiag_std"] == pytest.approx(np.sqrt(2) / 3)  # sqrt(1/3 - 1/9)
    # The seed's own numbers: np.corrcoef over units, mean/std of the whole matrix.
    seed = np.corrcoef(acts.T)
    assert s["mean"] == pytest.approx(seed.mean()) and s["std"] == pytest.approx(seed.std())


def test_dead_units_are_left_out_and_counted_never_nan():
    rng = np.random.default_rng(4)
    live = rng.normal(size=(50, 4))
    acts = np.column_stack([live[:, :2], np.zeros(50), live[:, 2:], np.full(50, 3.0)])
    corr, s = correlation_stats(acts.astype(np.float32))
    assert s["dead_units"] == 2 and s["shape"] == [4, 4] and corr.shape == (4, 4)
    assert np.isfinite(corr).all()
    assert all(np.isfinite(s[k]) for k in ("mean", "std", "offdiag_mean", "offdiag_std"))
    _, all_dead = correlation_stats(np.zeros((20, 5)))
    assert all_dead["dead_units"] == 5 and all_dead["shape"] == [0, 0]
    assert all_dead["mean"] is None and all_dead["offdiag_mean"] is None


# ---------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", model_names())
def test_every_network_is_recognised_from_its_weights(name):
    assert recognise_model(build_model(name).state_dict()) == name


def test_a_checkpoint_of_another_network_than_named_is_a_config_error(tmp_path):
    path = tmp_path / "three_fc.pt"
    torch.save(build_model("three_fc").state_dict(), path)
    assert load_study_net(path, "compare.candidate", None)[1] == "three_fc"
    with pytest.raises(ConfigError, match="holds a three_fc"):
        load_study_net(path, "compare.candidate", "two_conv_one_fc")


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained_compare(tmp_path_factory):
    """`python -m fmnist_lab.compare` with nothing given: trains both networks, compares."""
    out = tmp_path_factory.mktemp("compare")
    proc = run_cli("fmnist_lab.compare", *TINY_COMPARE, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_compare_trains_both_networks_and_writes_every_output(trained_compare):
    out, proc = trained_compare
    summary = json.loads((out / "compare.json").read_text())
    assert summary["num_images"] == 60
    ref, cand = summary["networks"]["reference"], summary["networks"]["candidate"]
    assert ref["model"] == "resnet18" and ref["weights"] == "fashion_mnist_run"
    assert cand["model"] == "two_conv_one_fc" and ref["trained_here"] and cand["trained_here"]
    for role in ("reference", "candidate"):
        assert json.loads((out / role / "results.json").read_text())["status"] == "completed"
    assert set(summary["layers"]) == LAYERS
    for name, layer in summary["layers"].items():
        assert LAYER_FIELDS <= layer.keys(), name
        assert (out / layer["heatmap"]).read_bytes()[:4] == PNG_MAGIC
        assert layer["shape"][0] == layer["units"] - layer["dead_units"]
    assert summary["layers"]["reference.features"]["units"] == 512
    assert summary["layers"]["candidate.features"]["units"] == 128
    assert summary["layers"]["candidate.logits"]["units"] == 10
    assert {(p["a"], p["b"]) for p in summary["cka"]} == {
        ("reference.features", "candidate.features"), ("reference.features", "candidate.logits"),
        ("candidate.features", "candidate.logits")}
    assert all(0 <= p["linear_cka"] <= 1 + 1e-9 for p in summary["cka"])
    md = (out / "compare.md").read_text()
    assert "Correlation Matrix Shape" in md and "Linear CKA" in md and "(512, 512)" in md
    assert "| Model | Layer | Correlation Matrix Shape" in proc.stdout  # the table, printed


@pytest.mark.slow
def test_compare_of_given_run_and_checkpoint_reproduces_the_numbers(trained_compare, tmp_path):
    out, _ = trained_compare
    ckpt = out / "candidate" / "checkpoints" / "last.ckpt"
    overrides = [*TINY_COMPARE, f"compare.reference={out / 'reference'}",
                 f"compare.candidate={ckpt}"]
    summary = run_compare(compare_cfg(*overrides), tmp_path, overrides)
    first = json.loads((out / "compare.json").read_text())
    assert summary["networks"]["candidate"]["weights"] == "checkpoint"
    assert not summary["networks"]["reference"]["trained_here"]
    assert [p["linear_cka"] for p in summary["cka"]] == pytest.approx(
        [p["linear_cka"] for p in first["cka"]], abs=1e-6)
    assert not (tmp_path / "reference").exists()  # nothing was trained


@pytest.mark.slow
def test_a_run_folder_gives_its_final_weights_or_a_one_line_reason(trained_compare, tmp_path):
    out, _ = trained_compare
    final = load_network("candidate", out / "candidate", None).net.state_dict()

    def same_weights(network) -> bool:
        state = network.net.state_dict()
        return state.keys() == final.keys() and all(torch.equal(state[k], final[k]) for k in state)

    run = tmp_path / "run"
    shutil.copytree(out / "candidate", run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"cut short")  # damaged: the epoch file
    assert same_weights(load_network("candidate", run, None))
    reused = tmp_path / "study" / "reused"  # a run that reused another's results
    reused.mkdir(parents=True)
    (reused / "results.json").write_text(json.dumps(
        {"status": "completed", "reused_from": os.path.relpath(run, reused)}))
    assert same_weights(load_network("candidate", reused, None))
    (run / "results.json").unlink()  # interrupted: only its checkpoints are there
    with pytest.raises(CompareError, match="has not finished"):
        load_network("candidate", run, None)


@pytest.mark.slow
def test_torchvision_weights_file_gives_512_features(trained_compare, tmp_path):
    out, _ = trained_compare
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # random, ImageNet-shaped
    overrides = ["compare.num_images=20", "compare.imagenet_size=64", "trainer.accelerator=cpu",
                 f"compare.reference_weights={weights}", f"compare.candidate={out / 'candidate'}"]
    summary = run_compare(compare_cfg(*overrides), tmp_path, overrides)
    ref = summary["networks"]["reference"]
    assert ref["weights"] == "imagenet_file" and ref["input_size"] == 64
    assert summary["layers"]["reference.features"]["units"] == 512
    assert "ImageNet" in (tmp_path / "compare.md").read_text()


@pytest.mark.slow
def test_bad_reference_path_is_one_line_error(tmp_path):
    proc = run_cli("fmnist_lab.compare", f"compare.reference={tmp_path / 'nope'}",
                   f"hydra.run.dir={tmp_path / 'run'}", "trainer.accelerator=cpu")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and "compare.reference" in message[0], proc.stderr


@pytest.mark.parametrize("override, key", [
    ("compare.num_images=2", "compare.num_images"),
    ("compare.candidate_model=four_fc", "compare.candidate_model"),
    ("compare.reference_weights=/nowhere/resnet18.pth", "compare.reference_weights"),
    ("transforms.p=0.5", "transforms.p"),  # and the training keys, for what it trains
])
def test_the_comparisons_config_is_checked_with_the_training_rules(override, key):
    from fmnist_lab.schema import check_config
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(compose_config("compare", override if "transforms" not in override
                                    else "+transforms.p=0.5"))
