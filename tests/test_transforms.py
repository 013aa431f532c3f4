import pytest
import torch

from fmnist_lab.data import load_fashion_mnist
from fmnist_lab.transforms import (
    ColorJitter,
    RandomHorizontalFlip,
    RandomRotation,
    normalize,
    to_unit_float,
)

AUGMENTATIONS = {
    "hflip": RandomHorizontalFlip(0.5),
    "color_jitter": ColorJitter(0.2, 0.2),
    "rotation": RandomRotation(10),
}


@pytest.fixture(scope="module")
def one_image_repeated():
    image = load_fashion_mnist().train_images[0]  # an ankle boot: not left-right symmetric
    return to_unit_float(image.expand(64, 28, 28).clone())


def test_standard_is_totensor_then_normalize():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    x = normalize(to_unit_float(images))
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 1.0, -0.6, -0.2]))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augmentations_keep_shape_dtype_and_range(name, one_image_repeated):
    torch.manual_seed(0)
    out = AUGMENTATIONS[name](one_image_repeated)
    assert out.shape == one_image_repeated.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_randomness_is_drawn_per_image(name, one_image_repeated):
    torch.manual_seed(0)
    out = AUGMENTATIONS[name](one_image_repeated)
    distinct = torch.unique(out.flatten(1), dim=0)
    assert len(distinct) > 1, "every image of the batch got the same transform"


def test_hflip_flips_about_half():
    torch.manual_seed(0)
    x = torch.rand(2000, 1, 28, 28)
    out = RandomHorizontalFlip(0.5)(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept)
    assert 0.45 < flipped.float().mean() < 0.55


def test_rotation_by_zero_degrees_is_identity(one_image_repeated):
    out = RandomRotation(0)(one_image_repeated)
    assert torch.allclose(out, one_image_repeated, atol=1e-6)


def test_color_jitter_brightness_and_contrast_stay_within_their_factors():
    torch.manual_seed(0)
    x = torch.full((500, 1, 28, 28), 0.5)
    out = ColorJitter(brightness=0.2, contrast=0.0)(x)
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6
    assert factors.std() > 0.05


def test_saturation_and_hue_change_nothing_on_grey_images(one_image_repeated):
    # Why ColorJitter has neither: torchvision's leave one-channel images as they are.
    import torchvision.transforms as T

    out = T.ColorJitter(saturation=0.2, hue=0.1)(one_image_repeated)
    assert torch.equal(out, one_image_repeated)
