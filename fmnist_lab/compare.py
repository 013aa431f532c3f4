"""`python -m fmnist_lab.compare [overrides]`: the seed's Figure 12, plus linear CKA.

The seed compared a ResNet-18 and its own network by the neuron-by-neuron Pearson
correlation matrix of one layer each, on a subset of the test set, summarised by the
matrix's shape, mean and standard deviation (over all entries, the diagonal of ones
included). This module reproduces that table, adds the off-diagonal statistics (the
seed's numbers are pulled towards 1 by the diagonal, the more so the fewer the units) and
linear CKA (Kornblith et al., 2019), the usual measure of how similar two representations
are, and draws each matrix as a heatmap.

Layers: the reference's `features` (for ResNet-18 the 512 features after global average
pooling); the candidate's `features` (its last hidden layer) and its `classifier` output
(the 10 logits, the layer the seed's (10, 10) matrix came from). They are captured with
forward hooks. A network not given is trained first, through `fmnist_lab.run.train`
with the same overrides, into a subfolder of this run's folder.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from fmnist_lab.data import stratified_holdout
from fmnist_lab.faults import checkpoint_to_resume
from fmnist_lab.models import StudyNet, build_model, model_config, model_name, model_names
from fmnist_lab.module import quiet_lightning
from fmnist_lab.results import read_results, write_json_atomic, write_text_atomic
from fmnist_lab.schema import ConfigError
from fmnist_lab.similarity import correlation_stats, linear_cka
from fmnist_lab.sources import DataError, load_source
from fmnist_lab.transforms import normalize, to_unit_float

matplotlib.use("Agg")  # files only: runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)

log = logging.getLogger("fmnist_lab")

ROLES = ("reference", "candidate")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS = {
    "fashion_mnist_run": "trained on Fashion-MNIST (run folder)",
    "checkpoint": "trained on Fashion-MNIST (checkpoint file)",
    "imagenet_file": "torchvision weights file (ImageNet), images resized to 3x{size}x{size}",
}
# CKA pairs (Figure 12 compares the two networks; the last pair shows how far the
# candidate's logits are from its own last hidden layer).
CKA_PAIRS = (("reference.features", "candidate.features"),
             ("reference.features", "candidate.logits"),
             ("candidate.features", "candidate.logits"))


class CompareError(Exception):
    """A problem a user can fix; its message is one line."""


# ---------------------------------------------------------------------------- networks


@dataclass
class Network:
    """One compared network: where its weights came from, and the layers read from it."""

    role: str
    model: str
    weights: str                     # a key of WEIGHTS
    source: str
    net: nn.Module
    layers: dict[str, nn.Module]     # layer name -> module whose output is captured
    imagenet_input: bool = False
    trained_here: bool = False
    run_test_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _load(path: Path, key: str) -> Any:
    try:  # weights_only: a checkpoint is data, never code to run
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        allowed = f"a file saved by torch.save (torch.load: {_one_line(e)})"
        raise ConfigError(key, str(path), allowed) from None


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def recognise_model(state: dict[str, torch.Tensor]) -> str | None:
    """The network of conf/model whose parameter names and shapes are those of `state`."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for name in model_names():
            if _shapes(build_model(name).state_dict()) == _shapes(state):
                return name
    return None


def load_study_net(path: Path, key: str, model: str | None) -> tuple[StudyNet, str]:
    """A network of `fmnist_lab.models` from a Lightning checkpoint or a bare state_dict."""
    ckpt = _load(path, key)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(key, str(path), "a Lightning checkpoint or a state_dict")
    # The LightningModule holds the network as `net`; its metrics are not part of it.
    if any(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    found = recognise_model(state)
    if found is None:
        raise ConfigError(key, str(path), f"a checkpoint of one of {', '.join(model_names())}; its "
                          "layers match none of them")
    if model is not None and model != found:
        raise ConfigError(key, str(path), f"a checkpoint of {model} (it holds a {found})")
    net = build_model(found)
    net.load_state_dict(state)
    return net, found


def load_torchvision_resnet18(path: Path, key: str) -> nn.Module:
    """torchvision's ResNet-18 with the weights of `path` (ImageNet's: 1000 classes)."""
    state = _load(path, key)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if fc is None:
        raise ConfigError(key, str(path), "a torchvision resnet18 state_dict (no fc.weight)")
    net = torchvision.models.resnet18(num_classes=fc.shape[0])
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(key, str(path), f"a torchvision resnet18 state_dict ({_one_line(e)})"
                          ) from None
    return net


def load_network(role: str, path: Path, model: str | None, trained_here: bool = False
                 ) -> Network:
    """The network of a finished run folder (the weights its test accuracy was measured on)
    or of a checkpoint file (any: an unfinished run's too)."""
    key = f"compare.{role}"
    results = None
    if path.is_dir():
        results = read_results(path)
        if results and results.get("reused_from"):  # the run that trained it holds the weights
            path = (path / results["reused_from"]).resolve()
            results = read_results(path)
        status = (results or {}).get("status")
        if status in ("diverged", "failed"):
            raise CompareError(f"{path}: the run {status}; its weights cannot be compared "
                               "(a smaller optimizer.lr may help)")
        if status != "completed":
            raise CompareError(f"{path}: the run has not finished (no completed results.json): "
                               "finish it (the same command resumes it), or name one of its "
                               "checkpoints/*.ckpt files to compare those weights")
        # The final epoch's weights: last.ckpt, or the epoch file beside it if that one is
        # damaged (checked as a resume checks it).
        checkpoint = checkpoint_to_resume(path / "checkpoints")
        if checkpoint is None:
            raise ConfigError(key, str(path), "a run folder of fmnist_lab.train holding "
                              "checkpoints/last.ckpt, or a .ckpt file")
    elif path.is_file():
        checkpoint = path
    else:
        raise ConfigError(key, str(path), "an existing run folder of fmnist_lab.train or "
                          ".ckpt file (no such file or folder)")
    net, name = load_study_net(checkpoint, key, model)
    layers = {"features": net.features}
    if role == "candidate":
        layers["logits"] = net.classifier
    return Network(role, name, "fashion_mnist_run" if path.is_dir() else "checkpoint",
                   str(path), net, layers, trained_here=trained_here,
                   run_test_acc=(results or {}).get("test_acc"))


def train_network(cfg: DictConfig, role: str, model: str | None, out_dir: Path,
                  overrides: list[str]) -> Network:
    """Train the network of `role` through the training pipeline, into out_dir/role.

    Started again in the same folder (the same hydra.run.dir), a completed run is reused.
    """
    from fmnist_lab.run import train  # Lightning is only needed when something trains

    run_dir = out_dir / role
    run_cfg = copy.deepcopy(cfg)
    with open_dict(run_cfg):
        del run_cfg["compare"]
        run_cfg.name = f"compare-{role}"
        if model is not None:
            run_cfg.model = model_config(model)
            overrides = [o for o in overrides if not o.startswith("model=")] + [f"model={model}"]
    if (read_results(run_dir) or {}).get("status") != "completed":
        print(f"training the {role} ({model_name(run_cfg.model)}) into {run_dir}", flush=True)
        train(run_cfg, run_dir, overrides)
    return load_network(role, run_dir, model, trained_here=True)


def imagenet_network(path: Path, size: int) -> Network:
    net = load_torchvision_resnet18(path, "compare.reference_weights")
    return Network("reference", "resnet18", "imagenet_file", str(path), net,
                   {"features": net.avgpool}, imagenet_input=True, extra={"input_size": size})


# ---------------------------------------------------------------------------- activations


def preprocess(images: torch.Tensor, imagenet: bool, size: int) -> torch.Tensor:
    """uint8 (B, 28, 28) -> what the network was trained on.

    Study networks: the standard pipeline, x/255 then Normalize(0.5, 0.5). ImageNet
    weights: grey repeated into 3 channels, upsampled to size x size, ImageNet mean/std.
    """
    x = to_unit_float(images)
    if not imagenet:
        return normalize(x)
    x = F.interpolate(x.repeat(1, 3, 1, 1), size=(size, size), mode="bilinear",
                      align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def capture(network: Network, images: torch.Tensor, batch_size: int, device: torch.device,
            size: int = 224) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Activations of `network.layers` on `images` (flattened per image), and the outputs."""
    net = network.net.to(device).eval()  # eval: batch norm uses its running statistics
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in network.layers}

    def hook(name: str):
        def save(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            captured[name].append(output.detach().flatten(1).float().cpu())
        return save

    handles = [m.register_forward_hook(hook(name)) for name, m in network.layers.items()]
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            outputs.append(net(preprocess(batch, network.imagenet_input, size)).float().cpu())
    finally:
        for h in handles:
            h.remove()
    acts = {name: torch.cat(parts).numpy() for name, parts in captured.items()}
    for name, a in acts.items():
        if not np.isfinite(a).all():
            raise CompareError(f"{network.source}: non-finite activations in "
                               f"{network.role}.{name}; the weights are unusable")
    return acts, torch.cat(outputs)


# ---------------------------------------------------------------------------- outputs


def _leading_order(corr: np.ndarray) -> np.ndarray:
    """Units sorted by the leading eigenvector of the matrix: correlated units end up side
    by side, so blocks show in the heatmap. Display only; the statistics ignore order."""
    if len(corr) < 3:
        return np.arange(len(corr))
    return np.argsort(np.linalg.eigh(corr)[1][:, -1])


def heatmap(corr: np.ndarray, stats: dict[str, Any], title: str, path: Path,
            labels: list[str] | None = None) -> None:
    """Correlation matrix on a fixed -1..1 diverging scale (0 white), stats in the title."""
    small = len(corr) <= 16
    order = np.arange(len(corr)) if small else _leading_order(corr)
    shown = corr[np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(7.2, 6.2) if small else (6.6, 5.8))
    image = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="Pearson correlation")
    n = len(corr)
    off = (f"off-diagonal {stats['offdiag_mean']:.3f} ± {stats['offdiag_std']:.3f}"
           if stats["offdiag_mean"] is not None else "no off-diagonal entries")
    mean = f"mean {stats['mean']:.3f}, std {stats['std']:.3f}" if n else "no live units"
    ax.set_title(f"{title}\n{n}×{n}: {mean}; {off}", fontsize=10)
    dead = f"; {stats['dead_units']} dead units left out" if stats["dead_units"] else ""
    if small:
        ticks = labels or [str(i) for i in range(n)]
        ax.set_xticks(range(n), ticks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), ticks, fontsize=8)
        for i in range(n):  # few cells: print the values, readable without the colour bar
            for j in range(n):
                ax.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(shown[i, j]) > 0.6 else "black")
        ax.set_xlabel(f"{'class logit' if labels else 'unit'}{dead}")
    else:
        ax.set_xlabel(f"unit (sorted by leading eigenvector){dead}")
    ax.set_ylabel("class logit" if labels else "unit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """The seed's Figure 12 table, with off-diagonal columns, dead units and linear CKA."""
    lines = ["## Representation comparison (the seed's Figure 12)", ""]
    for role in ROLES:
        net = summary["networks"][role]
        acc = net.get("subset_acc")
        lines.append(f"- {role}: `{net['model']}`, {net['weights_description']}"
                     f"{' (trained by this comparison)' if net['trained_here'] else ''}: "
                     f"`{net['source']}`"
                     + (f"; accuracy on the compared images {acc:.4f}" if acc is not None
                        else ""))
    lines += [f"- images: {summary['num_images']} of the 10,000 test images, "
              f"{summary['subset']}", "",
              "| Model | Layer | Correlation Matrix Shape | Correlation Mean | Correlation "
              "Standard Deviation | Off-diagonal Mean | Off-diagonal Std | Dead Units |",
              "|---|---|---|---|---|---|---|---|"]
    for layer in summary["layers"].values():
        shape = f"({layer['shape'][0]}, {layer['shape'][1]})"
        lines.append(f"| {layer['model']} ({layer['network']}) | {layer['description']} | "
                     f"{shape} | "
                     f"{_fmt(layer['mean'])} | {_fmt(layer['std'])} | "
                     f"{_fmt(layer['offdiag_mean'])} | {_fmt(layer['offdiag_std'])} | "
                     f"{layer['dead_units']} of {layer['units']} |")
    lines += ["", "Mean and standard deviation over all entries include the diagonal of ones, "
              "as the seed computed them; the off-diagonal columns leave it out. Dead units "
              "(zero variance on these images) are left out of the matrices.", "",
              "| Linear CKA | Value |", "|---|---|"]
    for pair in summary["cka"]:
        lines.append(f"| {pair['a']} vs {pair['b']} | {_fmt(pair['linear_cka'])} |")
    lines += ["", "Linear CKA (Kornblith et al., 2019): 1 = the same representation up to a "
              "rotation and scale, near 0 = unrelated.", "",
              "Correlation heatmaps (-1 blue, 0 white, +1 red):", ""]
    lines += [f"![{name}]({layer['heatmap']})" for name, layer in summary["layers"].items()]
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the command


def _describe(network: Network, layer: str) -> str:
    if layer == "logits":
        return "logits"
    return ("last hidden layer (global average pool)" if network.model == "resnet18"
            else "last hidden layer")


def run_compare(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Load or train both networks, compare them, write compare.json, compare.md, heatmaps
    (the config was checked before the run's folder was made: fmnist_lab.schema)."""
    c = cfg.compare
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    out_dir.mkdir(parents=True, exist_ok=True)
    train_overrides = [o for o in overrides if not o.lstrip("+~").startswith("compare.")]

    # Given networks first: a bad path fails in seconds, not after a training run.
    networks: dict[str, Network | None] = {"reference": None, "candidate": None}
    if c.reference_weights is not None:
        networks["reference"] = imagenet_network(Path(c.reference_weights), c.imagenet_size)
    for role in ROLES:
        if c[role] is not None:
            networks[role] = load_network(role, Path(c[role]), c[f"{role}_model"])
    data = load_source("fashion_mnist", cfg.data.root, cfg.data.download)
    defaults = {"reference": c.reference_model or "resnet18", "candidate": c.candidate_model}
    for role in ROLES:
        if networks[role] is None:
            networks[role] = train_network(cfg, role, defaults[role], out_dir, train_overrides)

    # The same images for every comparison, whatever the run's seed: stratified by class.
    _, picked = stratified_holdout(data.test_labels, c.num_images, c.subset_seed)
    images, labels = data.test_images[picked], data.test_labels[picked]
    use_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    device = torch.device("cuda" if use_gpu else "cpu")

    summary: dict[str, Any] = {
        "num_images": int(c.num_images),
        "subset": f"stratified by class, subset_seed {c.subset_seed}",
        "networks": {}, "layers": {}, "cka": [],
    }
    acts: dict[str, np.ndarray] = {}
    for role in ROLES:
        network = networks[role]
        assert network is not None
        layer_acts, outputs = capture(network, images, c.batch_size, device, c.imagenet_size)
        subset_acc = None if network.imagenet_input else float(
            (outputs.argmax(1) == labels).float().mean())
        summary["networks"][role] = {
            "model": network.model, "weights": network.weights,
            "weights_description": WEIGHTS[network.weights].format(size=c.imagenet_size),
            "source": network.source, "trained_here": network.trained_here,
            "run_test_acc": network.run_test_acc, "subset_acc": subset_acc,
            "layers": list(network.layers), **network.extra,
        }
        for layer, a in layer_acts.items():
            name = f"{role}.{layer}"
            acts[name] = a
            corr, stats = correlation_stats(a)
            png = f"corr_{role}_{layer}.png"
            described = _describe(network, layer)
            heatmap(corr, stats, f"{network.model} ({role}), {described}", out_dir / png,
                    list(CLASS_NAMES) if layer == "logits" and a.shape[1] == 10 else None)
            summary["layers"][name] = {"network": role, "model": network.model,
                                       "layer": layer, "description": described, **stats,
                                       "heatmap": png}
    for a, b in CKA_PAIRS:
        value = linear_cka(acts[a], acts[b])
        summary["cka"].append({"a": a, "b": b, "linear_cka": value if value == value else None})

    write_json_atomic(out_dir / "compare.json", summary)
    write_text_atomic(out_dir / "compare.md", markdown(summary))
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    quiet_lightning()
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = run_compare(cfg, out_dir, list(hydra_cfg.overrides.task))
    except (ConfigError, DataError, CompareError) as e:
        sys.exit(f"error: {e}")
    print(markdown(summary))
    print(f"wrote compare.json, compare.md and heatmaps to {out_dir}")


if __name__ == "__main__":
    main()
