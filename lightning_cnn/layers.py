"""The torch layers both sides of the port share: the Lightning models, the parity layer's twins of Keras models.

One place for each Keras rule that torch does not have built in: TensorFlow's 'same' padding (the odd pixel goes
to the bottom/right), Keras's activation names, ``Conv2D``/``Dense`` with a fused activation, Keras's pooling
layers, and VGG16's block table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    None: nn.Identity,
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),  # over channels/classes: NCHW's and (N, features)' axis 1
}
ACTIVATION_NAMES = tuple(name for name in ACTIVATIONS if name is not None)

# VGG16's convolution widths, block by block (each block ends with a 2x2 max-pool).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def make_activation(name: str | None) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {list(ACTIVATION_NAMES)}") from None


def output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """A Keras convolution's or pooling's output length along one axis, for padding 'same' or 'valid'."""
    return math.ceil(size / stride) if padding == "same" else (size - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's padding='same' along one axis: (before, after), the odd pixel after (matters for stride 2)."""
    span = (kernel - 1) * dilation + 1  # what a dilated kernel covers
    total = max((output_size(size, span, stride, "same") - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def _same_pads(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> list[int]:
    """``F.pad``'s (left, right, top, bottom) for TensorFlow's 'same' on an NCHW tensor."""
    return [*same_padding(x.shape[-1], kernel[1], stride[1]), *same_padding(x.shape[-2], kernel[0], stride[0])]


class SamePad2d(nn.Module):
    """Zero padding as TensorFlow's convolutions pad for padding='same' (used where torch's symmetric one differs)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _same_pads(x, (self.kernel_size,) * 2, (self.stride,) * 2)
        return F.pad(x, pads) if any(pads) else x


class SamePool2d(nn.Module):
    """Keras MaxPooling2D / AveragePooling2D with padding='same'.

    Max pooling pads with -inf; average pooling divides by the number of real pixels in each window (TF does not
    count the padding), computed by pooling a ones mask the same way.
    """

    def __init__(self, kind: str, pool_size: tuple, strides: tuple):
        super().__init__()
        self.kind, self.pool_size, self.strides = kind, tuple(pool_size), tuple(strides)

    def forward(self, x):
        pads = _same_pads(x, self.pool_size, self.strides)
        if self.kind == "max":
            return F.max_pool2d(F.pad(x, pads, value=-math.inf), self.pool_size, self.strides)
        ones = torch.ones_like(x[:1, :1])
        total = F.avg_pool2d(F.pad(x, pads), self.pool_size, self.strides)
        count = F.avg_pool2d(F.pad(ones, pads), self.pool_size, self.strides)
        return total / count

    def extra_repr(self):
        return f"{self.kind}, pool_size={self.pool_size}, strides={self.strides}"


class GlobalPool2d(nn.Module):
    """Keras GlobalAveragePooling2D / GlobalMaxPooling2D on NCHW (keepdims gives N,C,1,1)."""

    def __init__(self, kind: str, keepdims: bool = False):
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x):
        if self.kind == "avg":
            return x.mean(dim=(2, 3), keepdim=self.keepdims)
        return x.amax(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self):
        return f"{self.kind}, keepdims={self.keepdims}"


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with Keras's padding names and an optional fused activation (``Conv2D(..., activation=)``)."""

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


def vgg16_layers_in_blocks(blocks: int) -> int:
    """How many layers VGG16's first ``blocks`` blocks hold: one a convolution, one the block's max-pool."""
    return sum(len(block) + 1 for block in VGG16_BLOCKS[:blocks])
