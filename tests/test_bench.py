"""The throughput bench and the speed switches. Nothing here asserts a speed: the machine is
shared, and the bench itself reports the numbers (docs/performance.md)."""

import json

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.plugins.precision import MixedPrecision

from fmnist_lab import bench, sources
from fmnist_lab.models import study_models
from fmnist_lab.run import build_datamodule, build_module, train
from fmnist_lab.schema import BENCH_METHODS, ConfigError, check_config
from tests.conftest import TINY, compose_config, make_cfg, run_cli

MLP = ("model=three_fc", "optimizer.lr=0.05", "trainer.max_epochs=2")
CONV = ("model=three_conv", "optimizer.lr=0.05", "data.train_size=300")


def bench_cfg(*overrides: str):
    return compose_config("bench", *TINY, *overrides)


def checkpoint_keys(run_dir) -> list[str]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    return sorted(ckpt["state_dict"])


@pytest.fixture(scope="module")
def mlp_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlp")
    return out, train(make_cfg(*MLP), out)


@pytest.fixture(scope="module")
def conv_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    return out, train(make_cfg(*CONV), out)


# ---------------------------------------------------------------------------- switches


@pytest.mark.slow
def test_bf16_mixed_precision_trains_as_well_as_fp32(mlp_default, tmp_path):
    _, default = mlp_default
    result = train(make_cfg(*MLP, "trainer.precision=bf16-mixed"), tmp_path)
    assert result["status"] == "completed"
    assert abs(result["test_acc"] - default["test_acc"]) < 0.03  # seeds differ by ~0.07


def test_16_mixed_steps_through_lightnings_grad_scaler():
    # Lightning refuses 16-mixed on a CPU by name; its plugin with a CPU GradScaler runs
    # the same code path as on a GPU: scale, backward, unscale and step, update.
    class CountingScaler(torch.amp.GradScaler):
        calls = {"scale": 0, "step": 0, "update": 0}

        def scale(self, outputs):
            self.calls["scale"] += 1
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            self.calls["step"] += 1
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            self.calls["update"] += 1
            return super().update(new_scale)

    cfg = make_cfg("model=three_fc", "optimizer.lr=0.05", "data.group_batches=4")
    datamodule, module = build_datamodule(cfg), build_module(cfg)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=CountingScaler("cpu"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, plugins=[plugin], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 19  # 600 images in batches of 32
    assert CountingScaler.calls == {"scale": 19, "step": 19, "update": 19}
    # Unscaled gradients (65536x) would have diverged; these learnt.
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert trainer.callback_metrics["val/acc"] > 0.2  # chance is 0.1


@pytest.mark.slow
def test_channels_last_converts_the_network_and_trains_the_same(conv_default, tmp_path):
    default_dir, default = conv_default
    module = build_module(make_cfg(*CONV, "data.channels_last=true"))
    conv = module.net.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    result = train(make_cfg(*CONV, "data.channels_last=true"), tmp_path)
    assert result["status"] == "completed"
    assert abs(result["test_acc"] - default["test_acc"]) < 0.02
    assert checkpoint_keys(tmp_path) == checkpoint_keys(default_dir)


@pytest.mark.slow
def test_compile_trains_the_same_and_keeps_checkpoint_keys(mlp_default, tmp_path):
    from torch._dynamo.utils import counters

    default_dir, default = mlp_default
    counters.clear()
    result = train(make_cfg(*MLP, "compile=true"), tmp_path)
    assert counters["stats"]["unique_graphs"] > 0  # torch.compile did run
    assert result["status"] == "completed"
    assert abs(result["test_acc"] - default["test_acc"]) < 0.02
    keys = checkpoint_keys(tmp_path)
    assert keys == checkpoint_keys(default_dir) and all(k.startswith("net.") for k in keys)


def test_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match="compile"):
        check_config(make_cfg("compile=maybe"))


@pytest.mark.slow
def test_runs_in_one_process_read_the_data_files_once(tmp_path, monkeypatch):
    reads = []
    read_idx = sources.read_idx
    monkeypatch.setattr(sources, "_SOURCES", {})
    monkeypatch.setattr(sources, "read_idx", lambda *args: reads.append(args[0]) or read_idx(*args))
    for seed in (0, 1):
        result = train(make_cfg("model=three_fc", f"seed={seed}"), tmp_path / str(seed))
        assert result["status"] == "completed"
    assert len(reads) == 4  # the four IDX files, read by the first run only


# ---------------------------------------------------------------------------- the bench


def test_window_counts_warmup_then_times_one_window():
    window = bench.Window(warmup=2, steps=3, max_seconds=60, device=torch.device("cpu"))
    done = [window.step(10) for _ in range(5)]
    assert done == [False] * 4 + [True]
    assert window.rate > 0


def test_window_counts_groups_of_steps():
    window = bench.Window(warmup=10, steps=20, max_seconds=60, device=torch.device("cpu"))
    assert [window.step(160, steps=16) for _ in range(3)] == [False, False, True]


def test_window_closes_after_max_seconds():
    window = bench.Window(warmup=1, steps=1000, max_seconds=1e-9, device=torch.device("cpu"))
    assert [window.step(1) for _ in range(2)] == [False, True]


def test_raw_loop_runs_under_bf16_autocast():
    cfg = bench_cfg("model=three_fc", "trainer.precision=bf16-mixed")
    window = bench.Window(2, 3, 60, torch.device("cpu"))
    bench.time_raw(cfg, window, torch.device("cpu"))
    assert window.rate > 0


def test_paired_ratio_is_the_median_of_each_rounds_ratio():
    rates = {"lightning": [90.0, 50.0, 100.0], "raw": [100.0, 50.0, 200.0]}
    assert bench.paired_ratio(rates, "lightning", "raw") == pytest.approx(0.9)
    assert bench.paired_ratio(rates, "lightning", "seed") is None


@pytest.mark.parametrize("transforms, first", [("standard", "ToTensor"),
                                               ("hflip", "RandomHorizontalFlip"),
                                               ("color_jitter", "ColorJitter"),
                                               ("rotation", "RandomRotation")])
def test_seed_style_transforms_are_torchvisions_per_image(transforms, first):
    compose_ = bench.seed_transform(bench_cfg(f"transforms={transforms}").transforms)
    assert type(compose_.transforms[0]).__name__ == first
    x = compose_(Image.fromarray(sources.load_source("fashion_mnist").train_images[0].numpy()))
    assert x.shape == (1, 28, 28) and -1 <= x.min() and x.max() <= 1


def test_bench_models_and_settings_are_checked():
    assert bench.bench_models(bench_cfg(), []) == study_models()
    assert bench.bench_models(bench_cfg("model=three_fc"), ["model=three_fc"]) == ["three_fc"]
    with pytest.raises(ConfigError, match="bench.models"):
        bench.bench_models(bench_cfg("bench.models=[three_fc,nope]"), [])
    for bad in ("bench.steps=0", "bench.max_seconds=0", "bench.methods=[fast]",
                "trainer.precision=64-true"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            check_config(bench_cfg(bad))


@pytest.mark.slow
def test_bench_command_prints_the_table_and_writes_bench_json(tmp_path):
    # Small groups keep Lightning's window near bench.steps (it stops at a group's edge).
    proc = run_cli("fmnist_lab.bench", "bench.models=[three_fc,one_conv_two_fc]",
                   "bench.steps=4", "bench.warmup=2", "bench.repeats=2", "data.batch_size=32",
                   "data.group_batches=2", "data.train_size=2000", "trainer.accelerator=cpu",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "params", "a", "lightning", "a0", "bare", "b", "raw",
                              "c", "seed", "a/c", "a/b"]
    assert any(line.startswith("three_fc") and "94,154" in line
               for line in proc.stdout.splitlines())
    assert "three_fc: lightning >= 10x seed-style" in proc.stdout

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["device"] == "cpu"
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["torch_threads"] >= 1
    assert report["settings"]["batch_size"] == 32 and report["settings"]["warmup"] == 2
    assert [r["model"] for r in report["results"]] == ["three_fc", "one_conv_two_fc"]
    for row in report["results"]:
        windows = row["windows"]
        assert all(len(windows[m]) == 2 and min(windows[m]) > 0 for m in BENCH_METHODS)
        assert all(row[m] == pytest.approx(sum(windows[m]) / 2) for m in BENCH_METHODS)
        raw_ratios = [a / b for a, b in zip(windows["lightning"], windows["raw"], strict=True)]
        assert row["lightning_over_raw"] == pytest.approx(sum(raw_ratios) / 2)
        assert row["lightning_over_seed"] == bench.paired_ratio(windows, "lightning", "seed")
    assert {t["target"] for t in report["targets"]} >= {"three_fc: lightning >= 10x seed-style",
                                                       "three_fc: lightning >= 0.9x raw"}


@pytest.mark.slow
def test_bench_rejects_an_unknown_network(tmp_path):
    proc = run_cli("fmnist_lab.bench", "bench.models=[nope]", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "bench.models" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_bench_on_the_gpu_with_every_switch(tmp_path):
    proc = run_cli("fmnist_lab.bench", "bench.models=[three_fc,two_conv_one_fc]",
                   "bench.steps=20", "bench.warmup=10", "trainer.accelerator=gpu",
                   "trainer.precision=bf16-mixed", "data.channels_last=true", "compile=true",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["device"] == "cuda" and report["machine"]["gpu"]
