"""Made-up runs for the report's tests: results.json records as fmnist_lab.train writes them,
laid out as Hydra lays out a sweep."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

# What train.py resolves, cut to the keys the report reads.
BASE_CONFIG: dict[str, Any] = {
    "name": "train", "seed": 0, "num_threads": None,
    "optimizer": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
    "data": {"root": None, "batch_size": 128, "train_size": None, "num_folds": None,
             "fold": None, "split_seed": 0},
    "model": {"_target_": "fmnist_lab.models.TwoConvOneFC"},
    "init": {"scheme": "default"},
    "transforms": {"_target_": "torch.nn.Identity"},
    "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False},
}


MODELS = {"two_conv_one_fc": ("TwoConvOneFC", 1_625_866), "three_fc": ("ThreeFC", 94_154)}


TRANSFORMS = {"hflip": {"_target_": "fmnist_lab.transforms.RandomHorizontalFlip", "p": 0.5},
              "rotation": {"_target_": "fmnist_lab.transforms.RandomRotation", "degrees": 10}}


def fake_result(experiment: str, swept: dict[str, Any], seed: int = 0, *,
                status: str = "completed", val_acc: float = 0.9, test_acc: float = 0.88,
                train_losses: tuple[float, ...] = (1.0, 0.5, 0.3),
                diverged_epoch: int | None = None) -> dict[str, Any]:
    """A results.json as train.py writes it, for `swept` values (dotted keys or groups)."""
    config = copy.deepcopy(BASE_CONFIG)
    config["name"], config["seed"] = experiment, seed
    model = "two_conv_one_fc"
    choices = {"data": "fashion_mnist", "model": model, "init": "default",
               "transforms": "standard", "trainer": "default", "experiment": experiment}
    for key, value in swept.items():
        if key in choices:
            choices[key] = value
        if key == "model":
            model = value
            config["model"] = {"_target_": f"fmnist_lab.models.{MODELS[value][0]}"}
        elif key == "init":
            config["init"] = {"scheme": value}
        elif key == "transforms":
            config["transforms"] = TRANSFORMS[value]
        else:
            section, name = key.split(".")
            config[section][name] = value
    overrides = [f"{k}={v}" for k, v in swept.items()]
    overrides += [f"experiment={experiment}", f"seed={seed}"]
    if status == "failed":
        return {"status": "failed", "error": "RuntimeError: boom", "seed": seed,
                "overrides": overrides, "choices": choices, "config": config}
    epochs = len(train_losses)
    history = [{"epoch": e + 1, "train_loss": loss, "train_acc": 0.5, "val_loss": loss + 0.1,
                "val_acc": val_acc - 0.05 * (epochs - 1 - e), "seconds": 2.0}
               for e, loss in enumerate(train_losses)]
    if status == "diverged":
        history = history[:diverged_epoch]
        history[-1].update(train_loss=math.nan, val_loss=math.nan, val_acc=0.1)
    return {"status": status, "model": model, "num_params": MODELS[model][1], "seed": seed,
            "overrides": overrides, "choices": choices, "diverged_epoch": diverged_epoch,
            "history": history,
            "test_loss": None if status == "diverged" else 0.3,
            "test_acc": None if status == "diverged" else test_acc, "device": "cpu",
            "train_images_per_second": 1000.0, "train_images": 550, "val_images": 50,
            "test_images": 1000, "config": config}


def write_sweep(folder: Path, results: list[dict[str, Any]]) -> Path:
    """Hydra's layout: FOLDER/<job num>_<overrides>/results.json."""
    for num, result in enumerate(results):
        run = folder / f"{num}_{','.join(result['overrides'][:1])}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(result))
    return folder


def lr_sweep_folder(tmp_path: Path) -> Path:
    """Two seeds of lr 0.001, 0.01, 0.1; lr 1 diverges in epoch 2 for both."""
    accs = {0.001: (0.80, 0.82), 0.01: (0.90, 0.92), 0.1: (0.85, 0.85)}
    results = [fake_result("learning_rate", {"optimizer.lr": lr}, seed, val_acc=acc[seed],
                           test_acc=acc[seed] - 0.01, train_losses=(1.0 + seed, 0.5, 0.2 + seed))
               for lr, acc in accs.items() for seed in (0, 1)]
    results += [fake_result("learning_rate", {"optimizer.lr": 1}, seed, status="diverged",
                            diverged_epoch=2) for seed in (0, 1)]
    return write_sweep(tmp_path / "lr", results)


def cv_sweep(folder: Path, accs: list[float], seeds: tuple[int, ...] = (0, 1)) -> Path:
    return write_sweep(folder, [
        fake_result("cross_validation", {"data.fold": fold, "data.num_folds": 5}, seed,
                    val_acc=acc + 0.01 * seed)
        for fold, acc in enumerate(accs) for seed in seeds])


def write_predictions(run: Path, val_acc: float, test_acc: float, rng: Any,
                      images: int = 1000) -> str:
    """predictions.npz as a completed run writes it, right on exactly `val_acc` and
    `test_acc` of `images` random labels (rng: a numpy Generator); its file name."""
    import numpy as np

    arrays = {}
    for split, acc in (("val", val_acc), ("test", test_acc)):
        label = rng.integers(0, 10, images).astype(np.uint8)
        right = rng.permutation(images) < round(acc * images)  # exactly acc of them
        arrays[f"{split}_label"] = label
        arrays[f"{split}_predicted"] = np.where(right, label, (label + 1) % 10)
    np.savez_compressed(run / "predictions.npz", **arrays)
    return "predictions.npz"
