"""The seed's four transform sets, as batch-wise tensor ops on the training device.

The seed applied torchvision transforms to PIL images one at a time. These modules take a
float batch (B, 1, 28, 28) in [0, 1] and draw their randomness per image, so one batch of
one repeated image comes out varied, as it would through the per-image pipeline, at a
fraction of the cost. `standard` (ToTensor + Normalize(0.5, 0.5)) is `to_unit_float`
followed by `normalize`; the data module applies the augmentation between the two, to
training batches only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1]: what ToTensor does."""
    return images.unsqueeze(1).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Normalize(mean=0.5, std=0.5): [0, 1] -> [-1, 1]."""
    return (x - 0.5) / 0.5


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, device=like.device, dtype=like.dtype).uniform_(low, high)


class RandomHorizontalFlip(nn.Module):
    """Each image is mirrored left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0], device=x.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class ColorJitter(nn.Module):
    """torchvision's ColorJitter on one-channel images: brightness and contrast.

    Brightness scales the image, contrast blends it with its own mean grey level, each by a
    factor drawn per image from [max(0, 1 - s), 1 + s], clamped to [0, 1], in an order drawn
    per image as torchvision does. torchvision's saturation and hue are left out: on a grey
    image saturation blends it with its own greyscale version (itself), and a hue shift
    leaves grey pixels grey, so the seed's values for them did nothing.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast

    def _factors(self, strength: float, x: torch.Tensor) -> torch.Tensor:
        return _uniform(x.shape[0], max(0.0, 1 - strength), 1 + strength, x).view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = self._factors(self.brightness, x), self._factors(self.contrast, x)

        def brighten(t: torch.Tensor) -> torch.Tensor:
            return (t * b).clamp(0, 1)

        def contrast(t: torch.Tensor) -> torch.Tensor:
            mean = t.mean(dim=(1, 2, 3), keepdim=True)
            return ((t - mean) * c + mean).clamp(0, 1)

        brightness_first = torch.rand(x.shape[0], device=x.device).view(-1, 1, 1, 1) < 0.5
        return torch.where(brightness_first, contrast(brighten(x)), brighten(contrast(x)))


class RandomRotation(nn.Module):
    """Each image is rotated by an angle drawn from [-degrees, degrees], corners filled black.

    Nearest-neighbour sampling by default, as torchvision's RandomRotation.
    """

    def __init__(self, degrees: float = 10.0, interpolation: str = "nearest") -> None:
        super().__init__()
        self.degrees, self.interpolation = degrees, interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = _uniform(x.shape[0], -self.degrees, self.degrees, x) * (math.pi / 180)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(
            x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False
        )
