"""The one torch layer library: the documented models' layers and the converter's helper modules.

Converted models (``lightning_cnn.converted``) are built from stock ``torch.nn`` modules wherever one computes
what Keras computes; the helper modules here cover only where Keras's semantics differ: TensorFlow's 'same'
padding when a size is unknown (the odd pixel goes to the bottom/right), 'same' pooling that does not count the
padding, Keras's ReLU options, per-element PReLU, Rescaling/Normalization constants, Keras's noise layers, and
``masked_rnn`` (a stock RNN module's weights run under Keras's mask). Each helper imports only ``torch``/``math``
so its source is written as it is into a converted folder's ``model.py``.
The documented models use ``Conv2d``/``Linear`` with Keras's fused activation and VGG16's block table.
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


def tf_same_pads(sizes, kernel_size, stride, dilation) -> list:
    """``F.pad`` amounts (last dimension first) for TensorFlow's padding='same': the odd pixel goes after."""
    pads = []
    for size, k, s, d in reversed(list(zip(sizes, kernel_size, stride, dilation))):
        span = (k - 1) * d + 1  # what a dilated kernel covers
        total = max((-(-size // s) - 1) * s + span - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


class SamePad(nn.Module):
    """TensorFlow's padding='same' from the input's size at run time (the odd pixel after, as TF pads).

    The converter uses it only where a spatial size is unknown (None in the Keras shape); with static sizes it
    writes the constant pads. ``kernel_size``/``stride``/``dilation`` have one entry per spatial dimension.
    """

    def __init__(self, kernel_size, stride, dilation=None, value=0.0):
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.dilation = tuple(dilation) if dilation is not None else (1,) * len(self.kernel_size)
        self.value = value

    def forward(self, x):
        pads = tf_same_pads(x.shape[2:], self.kernel_size, self.stride, self.dilation)
        return F.pad(x, pads, value=self.value) if any(pads) else x


class SamePool(nn.Module):
    """Keras max/average pooling with padding='same' (1-D, 2-D or 3-D, channels first): max pads with -inf,
    average divides by the real pixels in each window (TensorFlow does not count the padding)."""

    def __init__(self, kind, kernel_size, stride):
        super().__init__()
        self.kind, self.kernel_size, self.stride = kind, tuple(kernel_size), tuple(stride)

    def forward(self, x):
        pads = tf_same_pads(x.shape[2:], self.kernel_size, self.stride, (1,) * len(self.kernel_size))
        if self.kind == "max":
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[x.dim() - 3]
            return pool(F.pad(x, pads, value=-math.inf), self.kernel_size, self.stride)
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.dim() - 3]
        ones = torch.ones_like(x[:1, :1])
        return pool(F.pad(x, pads), self.kernel_size, self.stride) / pool(F.pad(ones, pads), self.kernel_size,
                                                                           self.stride)


class KerasReLU(nn.Module):
    """Keras's ReLU(negative_slope, max_value, threshold): x from threshold up to max_value,
    negative_slope * (x - threshold) below the threshold."""

    def __init__(self, negative_slope=0.0, max_value=None, threshold=0.0):
        super().__init__()
        self.negative_slope, self.max_value, self.threshold = negative_slope, max_value, threshold

    def forward(self, x):
        out = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return out if self.max_value is None else torch.clamp(out, max=self.max_value)


class ElementwisePReLU(nn.Module):
    """Keras's PReLU with one slope per element (``shape``: the input's, shared axes of size 1); ``nn.PReLU``
    has one per channel only."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        return torch.where(x >= 0, x, self.weight * x)


class Rescale(nn.Module):
    """Keras's Rescaling with per-channel constants: x * scale + offset (buffers, broadcast to ``shape``)."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("offset", torch.zeros(shape))

    def forward(self, x):
        return x * self.scale + self.offset


class Normalize(nn.Module):
    """Keras's Normalization: (x - mean) / max(sqrt(variance), epsilon), or its inverse (``invert``)."""

    def __init__(self, shape, epsilon=1e-7, invert=False):
        super().__init__()
        self.epsilon, self.invert = epsilon, invert
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("variance", torch.ones(shape))

    def forward(self, x):
        std = torch.clamp(torch.sqrt(self.variance), min=self.epsilon)
        return self.mean + x * std if self.invert else (x - self.mean) / std


class GaussianNoise(nn.Module):
    """Keras's GaussianNoise: adds N(0, stddev) in training, identity in eval."""

    def __init__(self, stddev):
        super().__init__()
        self.stddev = stddev

    def forward(self, x):
        return x + torch.randn_like(x) * self.stddev if self.training and self.stddev > 0 else x


class GaussianDropout(nn.Module):
    """Keras's GaussianDropout: multiplies by N(1, rate / (1 - rate)) in training, identity in eval."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training or self.rate == 0:
            return x
        return x * (1 + torch.randn_like(x) * math.sqrt(self.rate / (1 - self.rate)))


class NoiseShapeDropout(nn.Module):
    """Keras's Dropout(noise_shape=...): one keep/drop draw per cell of ``noise_shape`` (channels first; None
    means the input's size), broadcast over the rest; identity in eval."""

    def __init__(self, rate, noise_shape):
        super().__init__()
        self.rate, self.noise_shape = rate, tuple(noise_shape)

    def forward(self, x):
        if not self.training or self.rate == 0:
            return x
        shape = [n if s is None else s for n, s in zip(x.shape, self.noise_shape)]
        keep = torch.bernoulli(torch.full(shape, 1 - self.rate, device=x.device, dtype=x.dtype))
        return x * keep / (1 - self.rate)


class LayerScale(nn.Module):
    """ConvNeXt's LayerScale: x times a learned per-channel ``weight`` (``shape``: broadcast to the input, NCHW
    images get (C, 1, 1))."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return x * self.weight


class RandomFlip(nn.Module):
    """Keras's RandomFlip: in training, each image (NCHW) is flipped left-right and/or up-down with probability
    1/2 per direction; identity in eval."""

    def __init__(self, horizontal=True, vertical=True):
        super().__init__()
        self.horizontal, self.vertical = horizontal, vertical

    def forward(self, x):
        if not self.training:
            return x
        for enabled, dim in ((self.horizontal, 3), (self.vertical, 2)):
            if enabled:
                flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
                x = torch.where(flip, x.flip(dim), x)
        return x


class RandomAffine(nn.Module):
    """Keras's RandomRotation / RandomTranslation / RandomZoom: in training, each image (NCHW) is rotated by a
    uniform fraction of a full turn in ``rotation``, shifted by uniform fractions of its height/width in
    ``height_shift``/``width_shift`` and scaled by 1 + a uniform draw in ``height_zoom``/``width_zoom`` (width:
    the height's draw when None; above 1 zooms out), about the centre; pixels from outside the image follow
    ``fill_mode`` (reflect, wrap, nearest, constant with ``fill_value``); identity in eval."""

    def __init__(self, rotation=(0.0, 0.0), height_shift=(0.0, 0.0), width_shift=(0.0, 0.0),
                 height_zoom=(0.0, 0.0), width_zoom=None, fill_mode="reflect", interpolation="bilinear",
                 fill_value=0.0):
        super().__init__()
        self.rotation, self.height_shift, self.width_shift = rotation, height_shift, width_shift
        self.height_zoom, self.width_zoom = height_zoom, width_zoom
        self.fill_mode, self.interpolation, self.fill_value = fill_mode, interpolation, fill_value

    def _uniform(self, bounds, n, x):
        low, high = bounds
        return low + (high - low) * torch.rand(n, device=x.device, dtype=x.dtype)

    def forward(self, x):
        if not self.training:
            return x
        n = x.shape[0]
        angle = self._uniform(self.rotation, n, x) * (2 * math.pi)
        zoom_y = 1 + self._uniform(self.height_zoom, n, x)
        zoom_x = zoom_y if self.width_zoom is None else 1 + self._uniform(self.width_zoom, n, x)
        shift_y = self._uniform(self.height_shift, n, x) * 2  # grid coordinates span 2 per image extent
        shift_x = self._uniform(self.width_shift, n, x) * 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * zoom_x, -sin * zoom_y, -shift_x], 1),
                             torch.stack([sin * zoom_x, cos * zoom_y, -shift_y], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if self.fill_mode == "wrap":
            grid = torch.remainder(grid + 1, 2) - 1
        padding = {"reflect": "reflection", "nearest": "border"}.get(self.fill_mode, "zeros")
        mode = "nearest" if self.interpolation == "nearest" else "bilinear"
        out = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)
        if self.fill_mode == "constant" and self.fill_value != 0:
            inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode=mode, padding_mode="zeros",
                                   align_corners=False)
            out = out + (1 - inside) * self.fill_value
        return out


class RandomContrast(nn.Module):
    """Keras's RandomContrast: in training, each image's deviation from its per-channel mean is scaled by a
    uniform factor in [1 - lower, 1 + upper], then clipped to ``value_range``; identity in eval."""

    def __init__(self, lower, upper, value_range=(0.0, 255.0)):
        super().__init__()
        self.lower, self.upper, self.value_range = lower, upper, tuple(value_range)

    def forward(self, x):
        if not self.training:
            return x
        factor = 1 - self.lower + (self.lower + self.upper) * torch.rand(x.shape[0], 1, 1, 1, device=x.device,
                                                                         dtype=x.dtype)
        mean = x.mean(dim=(2, 3), keepdim=True)
        return torch.clamp((x - mean) * factor + mean, *self.value_range)


class RandomBrightness(nn.Module):
    """Keras's RandomBrightness: in training, each image gets a uniform draw in [lower, upper] times the width of
    ``value_range`` added, then is clipped to ``value_range``; identity in eval."""

    def __init__(self, lower, upper, value_range=(0.0, 255.0)):
        super().__init__()
        self.lower, self.upper, self.value_range = lower, upper, tuple(value_range)

    def forward(self, x):
        if not self.training:
            return x
        low, high = self.value_range
        delta = self.lower + (self.upper - self.lower) * torch.rand(x.shape[0], 1, 1, 1, device=x.device,
                                                                    dtype=x.dtype)
        return torch.clamp(x + delta * (high - low), low, high)


def masked_rnn(rnn, x, mask, go_backwards=False, zero_output=False):
    """Keras's masked recurrence with the weights of a stock one-layer, batch-first ``nn.LSTM``/``nn.GRU``/
    ``nn.RNN`` (one or two directions); returns what the module returns: (outputs, h_n) or (outputs, (h_n, c_n)).

    Where ``mask[n, t]`` is False a step keeps the state and outputs the previous step's output (zeros with
    ``zero_output``, Keras's ``zero_output_for_mask``); ``go_backwards`` flips the sequence and its mask (outputs
    in processing order, as Keras returns them); a reverse direction runs from the last step to the first, its
    outputs aligned with time. The stock module cannot skip steps, hence the loop; every step's input projection
    is one matrix product up front."""
    kind, mask = type(rnn).__name__, mask.to(torch.bool)
    if go_backwards:
        x, mask = x.flip(1), mask.flip(1)
    steps, outputs, finals = x.shape[1], [], []
    for suffix in ("", "_reverse") if rnn.bidirectional else ("",):
        projected = F.linear(x, getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"bias_ih_l0{suffix}", None))
        w_hh, b_hh = getattr(rnn, f"weight_hh_l0{suffix}"), getattr(rnn, f"bias_hh_l0{suffix}", None)
        h = c = zeros = x.new_zeros(x.shape[0], rnn.hidden_size)
        out = [zeros] * steps
        for t in range(steps - 1, -1, -1) if suffix else range(steps):
            keep, gx, gh = mask[:, t, None], projected[:, t], F.linear(h, w_hh, b_hh)
            if kind == "LSTM":
                i, f, g, o = (gx + gh).chunk(4, 1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                c = torch.where(keep, c_new, c)
            elif kind == "GRU":  # torch's gate order r, z, n; the reset gate applies to W_hn h + b_hn
                (rx, zx, nx), (rh, zh, nh) = gx.chunk(3, 1), gh.chunk(3, 1)
                r, z = torch.sigmoid(rx + rh), torch.sigmoid(zx + zh)
                h_new = (1 - z) * torch.tanh(nx + r * nh) + z * h
            else:
                h_new = torch.relu(gx + gh) if rnn.nonlinearity == "relu" else torch.tanh(gx + gh)
            h = torch.where(keep, h_new, h)
            out[t] = torch.where(keep, h_new, zeros) if zero_output else h
        outputs.append(torch.stack(out, 1))
        finals.append((h, c))
    output = torch.cat(outputs, -1) if len(outputs) > 1 else outputs[0]
    h_n = torch.stack([h for h, _ in finals])
    return (output, (h_n, torch.stack([c for _, c in finals]))) if kind == "LSTM" else (output, h_n)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with Keras's padding names and an optional fused activation (``Conv2D(..., activation=)``)."""

    def __init__(self, in_channels, filters, kernel_size, padding="valid", strides=1, activation=None):
        symmetric = padding == "valid" or (strides == 1 and kernel_size % 2 == 1)
        torch_padding = 0 if padding == "valid" else kernel_size // 2
        super().__init__(in_channels, filters, kernel_size, stride=strides, padding=torch_padding if symmetric else 0)
        self.same_pad = None if symmetric else SamePad((kernel_size,) * 2, (strides,) * 2)
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
