import pytest
import torch

from fmnist_lab.sources import load_source
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
    image = load_source("fashion_mnist").train_images[0]  # an ankle boot: not left-right symmetric
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


# Translation, erasing and their combination.
def test_translation_shifts_each_image_by_its_own_whole_pixels(one_image_repeated):
    from fmnist_lab.transforms import RandomTranslate

    torch.manual_seed(0)
    out = RandomTranslate(2)(one_image_repeated)
    padded = torch.nn.functional.pad(one_image_repeated[0], (2, 2, 2, 2))
    crops = {(dy, dx): padded[:, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)}
    shifts = [next(s for s, crop in crops.items() if torch.equal(crop, image)) for image in out]
    assert len(set(shifts)) > 10  # drawn per image, from all 25 shifts


def test_erasing_blanks_one_rectangle_of_the_asked_area():
    from fmnist_lab.transforms import RandomErasing

    torch.manual_seed(0)
    x = torch.ones(1000, 1, 28, 28)
    assert torch.equal(RandomErasing(p=0.0)(x), x)
    out = RandomErasing(p=1.0, scale=(0.02, 0.33))(x)
    count = (out == 0).flatten(1).sum(1)
    erased = count.float() / 784
    assert erased.min() > 0 and erased.max() < 0.45 and erased.std() > 0.05
    rows, cols = (out[:, 0] == 0).any(2), (out[:, 0] == 0).any(1)
    assert torch.equal(count, rows.sum(1) * cols.sum(1))  # one rectangle
    assert 0.4 < (RandomErasing(p=0.5)(x) == 0).flatten(1).any(1).float().mean() < 0.6


def test_combined_dials_compose_and_zero_leaves_an_augmentation_out(cfg_factory):
    from hydra.utils import instantiate

    from fmnist_lab.transforms import Combined, RandomErasing, RandomTranslate

    x = torch.rand(8, 1, 28, 28)
    assert torch.equal(Combined()(x), x)
    preset = instantiate(cfg_factory("transforms=combined", "transforms.translate=4").transforms)
    assert [type(m) for m in preset] == [RandomHorizontalFlip, RandomTranslate, RandomErasing]
    assert preset[1].pad == 4
    full = Combined(flip=0.5, degrees=10, translate=2, jitter=0.2, erase=0.5)
    assert [type(m) for m in full][1:4] == [RandomRotation, RandomTranslate, ColorJitter]
    torch.manual_seed(0)
    out = full(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("preset", ["translate", "erase", "combined"])
def test_new_presets_train(tmp_path, cfg_factory, preset):
    from fmnist_lab.run import train

    result = train(cfg_factory("model=three_fc", f"transforms={preset}", "data.test_size=200",
                               "optimizer.lr=0.05"), tmp_path)
    assert result["status"] == "completed" and result["test_acc"] > 0.2
