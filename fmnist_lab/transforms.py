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


class RandomTranslate(nn.Module):
    """Pad and crop: each image is shifted by whole pixels drawn from [-pad, pad] in each
    direction, the uncovered border black (the background), as torchvision's
    RandomCrop(28, padding=pad)."""

    def __init__(self, pad: int = 2) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p)).flatten(2)  # (B, C, (H+2p)(W+2p))
        # Each image's crop as one gather over the flattened padded image.
        dy, dx = torch.randint(0, 2 * p + 1, (2, b, 1, 1), device=x.device)
        rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
        index = (rows * (w + 2 * p) + cols).view(b, 1, h * w).expand(b, c, h * w)
        return padded.gather(2, index).view(b, c, h, w)


class RandomErasing(nn.Module):
    """torchvision's RandomErasing (Zhong et al. 2017): with probability p an image gets one
    rectangle of `value` (0: black), its area a fraction of the image drawn from `scale`, its
    aspect ratio log-uniform from `ratio`. Where torchvision retries a rectangle that does
    not fit, this clamps its sides to the image: one draw per image, no loop."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> None:
        super().__init__()
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        area = _uniform(b, *self.scale, x) * (h * w)
        aspect = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), x).exp()
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        top = (torch.rand(b, device=x.device) * (h - eh + 1)).floor().view(-1, 1, 1)
        left = (torch.rand(b, device=x.device) * (w - ew + 1)).floor().view(-1, 1, 1)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((ys >= top) & (ys < top + eh.view(-1, 1, 1))
                  & (xs >= left) & (xs < left + ew.view(-1, 1, 1)))
        erase = (torch.rand(b, device=x.device) < self.p).view(-1, 1, 1)
        return x.masked_fill((inside & erase).unsqueeze(1), self.value)


class Combined(nn.Sequential):
    """Several augmentations at once, each dialled by its own key, 0 leaving it out, in
    torchvision's usual order (geometry, then intensity, then erasing last):

    flip: probability of a left-right mirror; degrees: rotation range; translate: shift in
    pixels (pad and crop); jitter: brightness and contrast strength; erase: probability of
    erasing a rectangle. `transforms=combined transforms.translate=4` turns one dial.
    """

    def __init__(self, flip: float = 0.0, degrees: float = 0.0, translate: int = 0,
                 jitter: float = 0.0, erase: float = 0.0) -> None:
        parts: list[nn.Module] = []
        if flip:
            parts.append(RandomHorizontalFlip(flip))
        if degrees:
            parts.append(RandomRotation(degrees))
        if translate:
            parts.append(RandomTranslate(translate))
        if jitter:
            parts.append(ColorJitter(brightness=jitter, contrast=jitter))
        if erase:
            parts.append(RandomErasing(erase))
        super().__init__(*parts)
