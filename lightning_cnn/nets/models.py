"""PyTorch builds of the documented models, made from the framework-neutral table in ``specs``.

One builder for all of them: each spec layer maps to one named child (named as Keras would name the layer, so
a summary, a state dict and the Keras model line up). Models return logits: a trailing softmax in the spec is
left to the loss and to prediction. Fused activations (``Conv2D(..., activation='relu')``) stay fused in one
child, as in Keras, so per-layer parameter counts match ``model.summary()``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import VGG16_BLOCKS, Conv2d, Linear, make_activation, output_size, vgg16_features
from ..specs import ModelSpec, get_spec

def vgg16_frozen_prefix(blocks: int) -> int:
    """Number of `features` children in the first ``blocks`` blocks (conv+relu pairs plus the pool)."""
    return sum(2 * len(block) + 1 for block in VGG16_BLOCKS[:blocks])


KERAS_LAYER_NAMES = {
    "conv2d": "conv2d", "maxpool2d": "max_pooling2d", "dropout": "dropout", "flatten": "flatten",
    "dense": "dense", "activation": "activation", "vgg16_features": "features",
}


def _layer_name(kind: str, counts: dict) -> str:
    base = KERAS_LAYER_NAMES[kind]
    n = counts.get(base, 0)
    counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def _drop_final_softmax(layers: tuple) -> list:
    """Logits out: remove a trailing softmax, whether a separate Activation or fused into the last Dense."""
    layers = list(layers)
    kind, options = layers[-1]
    if kind == "activation" and options["activation"] == "softmax":
        layers.pop()
    elif kind == "dense" and options["activation"] == "softmax":
        layers[-1] = (kind, {**options, "activation": None})
    return layers


def build_from_layers(layers, input_shape: tuple) -> nn.Sequential:
    """Build a torch ``Sequential`` from spec layers; ``input_shape`` is Keras's (H, W, C)."""
    height, width, channels = input_shape
    features = None  # set once flattened
    counts: dict = {}
    children = OrderedDict()
    for kind, options in layers:
        name = _layer_name(kind, counts)
        if kind == "conv2d":
            k, s = options["kernel_size"], options["strides"]
            module = Conv2d(channels, options["filters"], k, options["padding"], s, options["activation"])
            height, width = (output_size(size, k, s, options["padding"]) for size in (height, width))
            channels = options["filters"]
        elif kind == "maxpool2d":
            p = options["pool_size"]
            module = nn.MaxPool2d(p, p)  # Keras's MaxPooling2D: stride = pool size
            height, width = height // p, width // p
        elif kind == "dropout":
            module = nn.Dropout(options["rate"])
        elif kind == "activation":
            module = make_activation(options["activation"])
        elif kind == "flatten":
            module = nn.Flatten()
            features = channels * height * width
        elif kind == "dense":
            if features is None:
                raise ValueError(f"layer {name}: Dense needs a Flatten before it in these image models")
            module = Linear(features, options["units"], options["activation"])
            features = options["units"]
        elif kind == "vgg16_features":
            module = vgg16_features()
            channels, height, width = 512, height // 32, width // 32
        else:
            raise ValueError(f"unsupported layer kind {kind!r}")
        children[name] = module
    return nn.Sequential(children)


@torch.no_grad()
def keras_init_(model: nn.Module) -> nn.Module:
    """Keras's default initialisers: glorot_uniform kernels, zero biases (torch's xavier uses the same fans)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def freeze_for_spec(model: nn.Sequential, spec: ModelSpec) -> None:
    for (kind, options), child in zip(spec.layers, model.children()):
        if kind == "vgg16_features":
            for layer in list(child.children())[: vgg16_frozen_prefix(options["frozen_blocks"])]:
                layer.requires_grad_(False)


def build_model(model_id: str, *, init: str = "keras", seed: int | None = None) -> nn.Sequential:
    """The documented model ``model_id`` as a torch module (NCHW in, logits out).

    ``init="keras"`` (default) uses Keras's initialisers so a Lightning run of a recipe is the same experiment as
    the Keras run; ``init="torch"`` keeps PyTorch's own. ``seed`` makes the initial weights reproducible.
    """
    spec = get_spec(model_id)
    if init not in ("keras", "torch"):
        raise ValueError(f"init must be 'keras' or 'torch', not {init!r}")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = build_from_layers(_drop_final_softmax(spec.layers), spec.input_shape)
        if init == "keras":
            keras_init_(model)
    freeze_for_spec(model, spec)
    model.spec = spec
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
