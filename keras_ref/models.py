"""Keras builds of the documented models from the shared spec table (channels-last, softmax outputs)."""

from __future__ import annotations

import os

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

from keras import layers  # noqa: E402

from lightning_cnn.nets.layers import vgg16_layers_in_blocks  # noqa: E402
from lightning_cnn.nets.pretrained import KERAS_NOTOP_NAME as VGG16_NOTOP_FILE  # noqa: E402
from lightning_cnn.nets.pretrained import WeightsNotFoundError, find_vgg16_weights  # noqa: E402
from lightning_cnn.specs import ModelSpec, get_spec  # noqa: E402

def _keras_layer(kind: str, options: dict):
    if kind == "conv2d":
        return layers.Conv2D(options["filters"], options["kernel_size"], strides=options["strides"],
                             padding=options["padding"], activation=options["activation"])
    if kind == "maxpool2d":
        return layers.MaxPooling2D(options["pool_size"])
    if kind == "dropout":
        return layers.Dropout(options["rate"])
    if kind == "flatten":
        return layers.Flatten()
    if kind == "dense":
        return layers.Dense(options["units"], activation=options["activation"])
    if kind == "activation":
        return layers.Activation(options["activation"])
    raise ValueError(f"unsupported layer kind {kind!r}")


def _build_vgg16_transfer(spec: ModelSpec, weights) -> keras.Model:
    """Document 003: VGG16 base + a Sequential top, joined functionally; ``model.layers[:15]`` frozen."""
    try:
        path = find_vgg16_weights(weights, framework="keras")
    except WeightsNotFoundError:
        if weights not in (None, "auto"):
            raise
        path = None  # as documents 003 did without a download: train from random weights, and say so
    if path is None:
        print(f"[keras_ref] no ImageNet weights ({VGG16_NOTOP_FILE} not given and not in the Keras cache): "
              "building VGG16 with weights=None (random initialisation)")
    input_tensor = keras.Input(shape=spec.input_shape)
    vgg16 = keras.applications.VGG16(include_top=False, weights=str(path) if path else None,
                                     input_tensor=input_tensor)
    top_model = keras.Sequential([keras.Input(shape=vgg16.output.shape[1:])]
                                 + [_keras_layer(kind, options) for kind, options in spec.layers[1:]], name="top_model")
    model = keras.Model(inputs=vgg16.input, outputs=top_model(vgg16.output), name=spec.id)
    frozen = 1 + vgg16_layers_in_blocks(spec.layers[0][1]["frozen_blocks"])  # the InputLayer, then convs and pools
    for layer in model.layers[:frozen]:
        layer.trainable = False
    return model


def build_model(model_id: str, *, seed: int | None = None, weights: str | os.PathLike | None = None) -> keras.Model:
    """The documented model ``model_id`` in Keras 3, as its document wrote it (softmax output).

    ``seed`` seeds Keras's initialisers; ``weights`` is a VGG16 no-top weights file (transfer model only).
    """
    spec = get_spec(model_id)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    if spec.layers[0][0] == "vgg16_features":
        return _build_vgg16_transfer(spec, weights)
    return keras.Sequential([keras.Input(shape=spec.input_shape)]
                            + [_keras_layer(kind, options) for kind, options in spec.layers], name=spec.id)
