"""Augmentation layers inside a model (as Keras's tutorials put them): identity in eval mode, as Keras at
inference (compared with Keras within keras_ref.tolerance's rule, both weight directions through the Conv2D
after them), and in training mode a random transform of the same kind on real CIFAR-10 images, checked by what it
must preserve: flips are flips, rotations/translations/zooms move pixels but keep the image's range, contrast and
brightness stay within value_range. torch draws its own random numbers: the images differ from Keras's draws."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from keras import layers

from keras_ref.convert import convert, to_twin_input

from .test_convert_layers import check_both_ways, images

pytestmark = pytest.mark.keras

AUGMENTATIONS = {
    "RandomFlip": lambda: layers.RandomFlip(),
    "RandomRotation": lambda: layers.RandomRotation(0.2),
    "RandomRotation_constant": lambda: layers.RandomRotation((-0.3, 0.1), fill_mode="constant", fill_value=0.5),
    "RandomTranslation": lambda: layers.RandomTranslation(0.2, (-0.1, 0.3), fill_mode="wrap"),
    "RandomZoom": lambda: layers.RandomZoom(0.3, fill_mode="nearest", interpolation="nearest"),
    "RandomContrast": lambda: layers.RandomContrast(0.4, value_range=(0, 1)),
    "RandomBrightness": lambda: layers.RandomBrightness(0.3, value_range=(0, 1)),
}


def augmented(name):
    inputs = keras.Input((16, 16, 3))
    x = AUGMENTATIONS[name]()(inputs)
    return keras.Model(inputs, layers.Conv2D(4, 3, padding="same")(x))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_identity_at_inference_as_keras(name):
    keras.utils.set_random_seed(0)
    check_both_ways(augmented(name), images(16))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_random_transform_in_training(name):
    keras.utils.set_random_seed(0)
    twin = convert(augmented(name))
    (layer,) = [m for n, m in twin.named_children() if n.startswith("random")]
    x = to_twin_input(images(16, n=8))
    layer.train()
    torch.manual_seed(0)
    y = layer(x)
    assert y.shape == x.shape and not torch.equal(y, x), "training mode must transform"
    assert not torch.equal(layer(x), y), "each call draws anew"
    layer.eval()
    assert torch.equal(layer(x), x)
    if name == "RandomFlip":
        flips = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
        assert all(any(torch.equal(y[i], f[i]) for f in flips) for i in range(len(x)))
    elif name in ("RandomContrast", "RandomBrightness"):
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    else:  # geometric: resampled pixels of the image (or the fill value) only
        low = min(float(x.min()), 0.5 if "constant" in name else 1.0)
        assert float(y.min()) >= low - 1e-6 and float(y.max()) <= float(x.max()) + 1e-6
        assert float((y - x).abs().mean()) > 1e-3
