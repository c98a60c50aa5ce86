"""PyTorch builds of the documented models, made from the framework-neutral table in ``specs``.

One builder for all of them: each spec layer maps to one named child (named as Keras would name the layer, so
a summary, a state dict and the Keras model line up). Models return logits: a trailing softmax in the spec is
left to the loss and to prediction. Fused activations (``Conv2D(..., activation='relu')``) stay fused in one
child, as in Keras, so per-layer parameter counts match ``model.summary()``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .specs import ModelSpec, get_spec

ACTIVATIONS = {
    None: nn.Identity,
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),
}

# torchvision's VGG16 `features` layout; the index just past each block's max-pool (block4 ends at 24).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def make_activation(name: str | None) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(filter(None, ACTIVATIONS))}") from None


class SamePad2d(nn.Module):
    """TensorFlow's padding='same': the odd pixel goes to the bottom/right (matters for stride 2)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads) if any(pads) else x


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with Keras's padding names and an optional fused activation."""

    def __init__(self, in_channels, filters, kernel_size, padding="valid", strides=1, activation=None):
        symmetric = padding == "valid" or (strides == 1 and kernel_size % 2 == 1)
        torch_padding = 0 if padding == "valid" else kernel_size // 2
        super().__init__(in_channels, filters, kernel_size, stride=strides, padding=torch_padding if symmetric else 0)
        self.same_pad = None if symmetric else SamePad2d(kernel_size, strides)
        self.activation = make_activation(activation)

    def forward(self, x):
        if self.same_pad is not None:
            x = self.same_pad(x)
        return self.activation(super().forward(x))


class Linear(nn.Linear):
    """``nn.Linear`` with an optional fused activation (Keras ``Dense(units, activation=...)``)."""

    def __init__(self, in_features, units, activation=None):
        super().__init__(in_features, units)
        self.activation = make_activation(activation)

    def forward(self, x):
        return self.activation(super().forward(x))


class MaxPool2d(nn.MaxPool2d):
    """Keras's ``MaxPooling2D`` (stride = pool size); may apply the previous layer's activation after pooling."""

    def __init__(self, pool_size: int):
        super().__init__(pool_size, pool_size)
        self.activation = nn.Identity()

    def forward(self, x):
        return self.activation(super().forward(x))


def pool_before_activation_(model: nn.Sequential) -> nn.Sequential:
    """Moves each ReLU that is directly followed by a max-pool to after the pool, in place.

    Max-pooling commutes with a non-decreasing activation, so the outputs are the same bit for bit, and so are the
    gradients (the pool picks the same element, and ReLU's gradient is 0 wherever the window's maximum is <= 0);
    but ReLU and its backward then run on a quarter of the pixels. On this project's 2-core CPU that made
    mnist_cnn_small train 1.7x faster at batch 256 (scripts/bench.py). The conv layer's own output is then its
    pre-activation, so per-layer comparisons with Keras (the parity suite) use ``build_model`` without this.
    """
    children = list(model.named_children())
    for (name, layer), (_, pool) in zip(children, children[1:]):
        if not (isinstance(pool, MaxPool2d) and isinstance(pool.activation, nn.Identity)):
            continue
        if isinstance(getattr(layer, "activation", None), nn.ReLU):  # Conv2D(..., activation="relu")
            layer.activation, pool.activation = nn.Identity(), nn.ReLU()
        elif isinstance(layer, nn.ReLU):  # a separate Activation("relu") layer
            setattr(model, name, nn.Identity())
            pool.activation = nn.ReLU()
    return model


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional part with torchvision's indices, so torchvision checkpoints load as they are."""
    layers: list[nn.Module] = []
    in_channels = 3
    for block in VGG16_BLOCKS:
        for width in block:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


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
            if options["padding"] == "same":
                height, width = math.ceil(height / s), math.ceil(width / s)
            else:
                height, width = (height - k) // s + 1, (width - k) // s + 1
            channels = options["filters"]
        elif kind == "maxpool2d":
            p = options["pool_size"]
            module = MaxPool2d(p)
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
