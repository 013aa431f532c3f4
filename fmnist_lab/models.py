"""The study's four networks (at most three hidden layers) and the ResNet-18 reference.

Every network is `features` (input -> last hidden layer, flattened) followed by one linear
`classifier`, so the representation comparison can read the last hidden layer of any of
them the same way. ReLU follows every hidden layer. The parameter counts in the docstrings
are checked by the tests.

A network's name is the name of its config file, conf/model/NAME.yaml: what `model=NAME`
selects, results.json records and every command accepts.

Regularisation (off by default, when the networks are exactly the seed's):
- `norm="batch"`: batch norm after every hidden conv and linear layer, before its ReLU; those
  layers drop their bias, which the norm's shift replaces.
- `dropout=p`: dropout after every hidden linear layer, where the parameters and the
  over-fitting are; ThreeConv has none, so it drops the flattened features before its
  classifier. Convolutions are left alone: dropping single pixels of a feature map barely
  regularises (neighbours carry the same signal).
Either adds modules only when switched on, so the default networks' checkpoints keep their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

CONF = Path(__file__).resolve().parents[1] / "conf"


class StudyNet(nn.Module):
    """features -> classifier."""

    def __init__(self, features: nn.Sequential, classifier: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


NORMS = ("none", "batch")


def _conv(c_in: int, c_out: int, norm: str = "none") -> list[nn.Module]:
    if norm == "none":
        return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _dropout(p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if p > 0 else []


def _fc(n_in: int, n_out: int, norm: str = "none", dropout: float = 0.0) -> list[nn.Module]:
    if norm == "none":
        return [nn.Linear(n_in, n_out), nn.ReLU(inplace=True), *_dropout(dropout)]
    return [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True),
            *_dropout(dropout)]


def _check(norm: str, dropout: float) -> None:
    if norm not in NORMS or not 0 <= dropout < 1:
        raise ValueError(f"norm must be one of {NORMS} and dropout in [0, 1), "
                         f"not {norm!r} and {dropout!r}")


class TwoConvOneFC(StudyNet):
    """conv 1->32, conv 32->64, max-pool 2, fc 64*14*14->128, fc 128->10 (1,625,866 params)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, norm: str = "none") -> None:
        _check(norm, dropout)
        features = nn.Sequential(
            *_conv(1, 32, norm), *_conv(32, 64, norm), nn.MaxPool2d(2), nn.Flatten(),
            *_fc(64 * 14 * 14, 128, norm, dropout),
        )
        super().__init__(features, nn.Linear(128, num_classes))


class OneConvTwoFC(StudyNet):
    """conv 1->32, max-pool 2, fc 32*14*14->64, fc 64->128, fc 128->10 (411,402 params)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, norm: str = "none") -> None:
        _check(norm, dropout)
        features = nn.Sequential(
            *_conv(1, 32, norm), nn.MaxPool2d(2), nn.Flatten(),
            *_fc(32 * 14 * 14, 64, norm, dropout), *_fc(64, 128, norm, dropout),
        )
        super().__init__(features, nn.Linear(128, num_classes))


class ThreeFC(StudyNet):
    """fc 784->64, fc 64->128, fc 128->256, fc 256->10 (94,154 params)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, norm: str = "none") -> None:
        _check(norm, dropout)
        features = nn.Sequential(
            nn.Flatten(), *_fc(28 * 28, 64, norm, dropout), *_fc(64, 128, norm, dropout),
            *_fc(128, 256, norm, dropout),
        )
        super().__init__(features, nn.Linear(256, num_classes))


class ThreeConv(StudyNet):
    """conv 1->32, conv 32->64, max-pool 2, conv 64->128, max-pool 2, fc 128*7*7->10.

    The seed text places a single 2x2 max-pool after the third convolution, yet feeds
    128*7*7 features to the classifier; with 3x3 padding-1 convolutions on 28x28 inputs
    one pool gives 14x14. Two pools, after conv 2 and conv 3, satisfy both statements
    (155,402 params).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.0, norm: str = "none") -> None:
        _check(norm, dropout)
        features = nn.Sequential(
            *_conv(1, 32, norm), *_conv(32, 64, norm), nn.MaxPool2d(2), *_conv(64, 128, norm),
            nn.MaxPool2d(2), nn.Flatten(), *_dropout(dropout),
        )
        super().__init__(features, nn.Linear(128 * 7 * 7, num_classes))


class ResNet18(StudyNet):
    """torchvision's ResNet-18 for 28x28 grey images (11,172,810 params).

    One input channel, a 3x3 stride-1 first convolution and no stem max-pool, so the
    small images are not downsampled 4x before the first residual stage. `features` ends
    with the global average pool: the 512 features the comparison reads.
    """

    def __init__(self, num_classes: int = 10) -> None:
        net = torchvision.models.resnet18(num_classes=num_classes)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        features = nn.Sequential(
            net.conv1, net.bn1, net.relu,
            net.layer1, net.layer2, net.layer3, net.layer4,
            net.avgpool, nn.Flatten(),
        )
        super().__init__(features, net.fc)


def model_names() -> list[str]:
    """Every network's name: conf/model/NAME.yaml."""
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def model_config(name: str) -> DictConfig:
    """conf/model/NAME.yaml: what `model=NAME` puts in a run's config."""
    return OmegaConf.load(CONF / "model" / f"{name}.yaml")


def build_model(name: str, **kwargs: Any) -> StudyNet:
    """The network `model=NAME` builds, with `kwargs` (dropout=0.3) over its config."""
    return instantiate(model_config(name), **kwargs)


def model_name(model_cfg: DictConfig | dict[str, Any]) -> str:
    """The name of the config file whose network a run's `model` config builds (its class's
    name if none does); its other keys (dropout, norm) may differ."""
    target = str(model_cfg["_target_"])
    for name in model_names():
        if model_config(name)["_target_"] == target:
            return name
    return target.rsplit(".", 1)[-1]


def study_models() -> list[str]:
    """The study's four networks, in the order of the architecture experiment's grid."""
    grid = OmegaConf.load(CONF / "experiment" / "architecture.yaml").hydra.sweeper.params.model
    return str(grid).split(",")


INITS = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


def init_weights(net: nn.Module, scheme: str) -> nn.Module:
    """Apply `scheme` to every conv and linear weight and zero their biases.

    `default` keeps PyTorch's own initialisation (Kaiming-uniform with a=sqrt(5) and small
    uniform biases). Batch-norm layers keep theirs in every case.
    """
    if scheme == "default":
        return net
    init = INITS[scheme]
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
