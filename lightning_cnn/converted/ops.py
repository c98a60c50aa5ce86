"""The torch side of a converted Keras graph: one op name -> one module class, built from plain JSON config.

Layout rule (the twin's boundary and every tensor inside it): rank-4 image tensors are NCHW in the twin where Keras
has NHWC; tensors of every other rank (vectors, sequences (N, steps, features), ...) keep Keras's layout. So a
Conv1D / LSTM / Embedding twin takes (N, steps, features) exactly as Keras does. The converter resolves every
axis a Keras layer names (Concatenate axis, Softmax axis, BN axis, ...) to the twin's dimension before it writes
the config, so the ops below never guess.

``OPS`` is the registry both the converter (keras_ref.convert) and the TF-free loader (graph.py) use; every module
takes its whole configuration as keyword arguments of JSON types, and ``extra_repr`` shows it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import same_padding


def _relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's relu: max_value above it, x between threshold and max_value, negative_slope*(x-threshold) below."""
    if negative_slope == 0.0 and threshold == 0.0:
        return F.relu(x) if max_value is None else torch.clamp(x, 0.0, max_value)
    below = negative_slope * (x - threshold)
    out = torch.where(x >= threshold, x, below)
    return out if max_value is None else torch.clamp(out, max=max_value)


def _hard_sigmoid(x):
    return F.relu6(x + 3.0) / 6.0  # Keras 3's hard_sigmoid (not Keras 2's 0.2x+0.5)


# Keras activation name -> torch function(x, dim, **kwargs); dim is the twin's channel/feature dimension.
ACTIVATIONS = {
    "linear": lambda x, dim: x,
    "relu": lambda x, dim, **kw: _relu(x, **kw),
    "relu6": lambda x, dim: F.relu6(x),
    "leaky_relu": lambda x, dim, negative_slope=0.2: F.leaky_relu(x, negative_slope),
    "elu": lambda x, dim, alpha=1.0: F.elu(x, alpha),
    "selu": lambda x, dim: F.selu(x),
    "gelu": lambda x, dim, approximate=False: F.gelu(x, approximate="tanh" if approximate else "none"),
    "silu": lambda x, dim: F.silu(x),
    "mish": lambda x, dim: F.mish(x),
    "sigmoid": lambda x, dim: torch.sigmoid(x),
    "hard_sigmoid": lambda x, dim: _hard_sigmoid(x),
    "hard_silu": lambda x, dim: x * _hard_sigmoid(x),
    "tanh": lambda x, dim: torch.tanh(x),
    "softplus": lambda x, dim: F.softplus(x),
    "softsign": lambda x, dim: F.softsign(x),
    "exponential": lambda x, dim: torch.exp(x),
    "softmax": lambda x, dim: torch.softmax(x, dim),
    "log_softmax": lambda x, dim: torch.log_softmax(x, dim),
}


def apply_activation(x, name: str, dim: int = -1, **kwargs):
    return ACTIVATIONS[name](x, dim, **kwargs)


def to_keras_layout(x):
    """NCHW -> NHWC for a rank-4 tensor; other ranks are already in Keras's layout."""
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def to_twin_layout(x):
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def same_pads(sizes, kernel, strides, dilation) -> list:
    """F.pad amounts (last dimension first) for TensorFlow's 'same': the odd pixel goes to the end."""
    pads = []
    for size, k, s, d in reversed(list(zip(sizes, kernel, strides, dilation))):
        pads += same_padding(size, k, s, d)
    return pads


def symmetric(pads: list) -> list | None:
    """The per-dimension padding (first dimension first) a torch kernel can apply itself, if ``pads`` (F.pad
    order) is the same on both sides of every dimension; else None (an explicit F.pad is needed)."""
    if any(pads[i] != pads[i + 1] for i in range(0, len(pads), 2)):
        return None
    return pads[::2][::-1]


class Op(nn.Module):
    """Base: keeps the JSON config (shown by print) and knows the twin's channel dimension for activations."""

    def __init__(self, **config):
        super().__init__()
        self.config = config

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items() if v is not None)


class Conv(Op):
    """Conv1D / Conv2D / DepthwiseConv2D (groups=in_channels) with Keras padding (valid, same, causal).

    Rank 1 takes (N, steps, channels) like Keras and returns the same layout; rank 2 is NCHW.
    """

    def __init__(self, rank, in_channels, filters, kernel_size, strides, padding, dilation, groups=1,
                 use_bias=True, activation="linear"):
        super().__init__(rank=rank, in_channels=in_channels, filters=filters, kernel_size=kernel_size,
                         strides=strides, padding=padding, dilation=dilation, groups=groups, use_bias=use_bias,
                         activation=activation)
        self.weight = nn.Parameter(torch.empty(filters, in_channels // groups, *kernel_size))
        self.bias = nn.Parameter(torch.zeros(filters)) if use_bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self._conv = F.conv1d if rank == 1 else F.conv2d

    def forward(self, x):
        c = self.config
        if c["rank"] == 1:
            x = x.transpose(1, 2)
        padding = 0
        if c["padding"] == "same":
            pads = same_pads(x.shape[2:], c["kernel_size"], c["strides"], c["dilation"])
            padding = symmetric(pads)  # the kernel pads itself unless TF's extra pixel at the end is needed
            if padding is None:
                x, padding = F.pad(x, pads), 0
        elif c["padding"] == "causal":
            x = F.pad(x, [(c["kernel_size"][0] - 1) * c["dilation"][0], 0])
        y = self._conv(x, self.weight, self.bias, c["strides"], padding, c["dilation"], c["groups"])
        y = apply_activation(y, c["activation"], 1)
        return y.transpose(1, 2) if c["rank"] == 1 else y


class SeparableConv(Op):
    """SeparableConv2D: a depthwise conv (depth_multiplier) then a 1x1 pointwise conv with bias, then activation."""

    def __init__(self, in_channels, filters, kernel_size, strides, padding, dilation, depth_multiplier=1,
                 use_bias=True, activation="linear"):
        super().__init__(in_channels=in_channels, filters=filters, kernel_size=kernel_size, strides=strides,
                         padding=padding, dilation=dilation, depth_multiplier=depth_multiplier, use_bias=use_bias,
                         activation=activation)
        mid = in_channels * depth_multiplier
        self.depthwise = Conv(2, in_channels, mid, kernel_size, strides, padding, dilation, in_channels, False)
        self.pointwise = Conv(2, mid, filters, [1, 1], [1, 1], "valid", [1, 1], 1, use_bias)

    def forward(self, x):
        return apply_activation(self.pointwise(self.depthwise(x)), self.config["activation"], 1)

    def extra_repr(self):
        return f"activation={self.config['activation']!r}"


class ConvTranspose(Op):
    """Conv2DTranspose with Keras padding: the full transposed conv, then cropped (same: to input*stride)."""

    def __init__(self, in_channels, filters, kernel_size, strides, padding, dilation, use_bias=True,
                 activation="linear"):
        super().__init__(in_channels=in_channels, filters=filters, kernel_size=kernel_size, strides=strides,
                         padding=padding, dilation=dilation, use_bias=use_bias, activation=activation)
        self.weight = nn.Parameter(torch.empty(in_channels, filters, *kernel_size))
        self.bias = nn.Parameter(torch.zeros(filters)) if use_bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        c = self.config
        sizes = x.shape[2:]
        y = F.conv_transpose2d(x, self.weight, None, c["strides"], 0, 0, 1, c["dilation"])
        for axis, (size, k, s, d) in enumerate(zip(sizes, c["kernel_size"], c["strides"], c["dilation"])):
            k = (k - 1) * d + 1
            if c["padding"] == "same":
                start, length = max(k - s, 0) // 2, size * s
            else:
                start, length = 0, (size - 1) * s + max(k, s)
            dim = 2 + axis
            if y.shape[dim] < start + length:  # kernel smaller than stride: TensorFlow pads zeros at the end
                pad = [0, 0] * (y.dim() - dim - 1) + [0, start + length - y.shape[dim]]
                y = F.pad(y, pad)
            y = y.narrow(dim, start, length)
        if self.bias is not None:  # after the padding: TensorFlow adds the bias to the padded pixels too
            y = y + self.bias[:, None, None]
        return apply_activation(y, c["activation"], 1)


class Dense(Op):
    """Dense on the last Keras axis; on a rank-4 (NCHW) input it is applied in Keras's NHWC layout."""

    def __init__(self, in_features, units, use_bias=True, activation="linear"):
        super().__init__(in_features=in_features, units=units, use_bias=use_bias, activation=activation)
        self.weight = nn.Parameter(torch.empty(units, in_features))
        self.bias = nn.Parameter(torch.zeros(units)) if use_bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        y = F.linear(to_keras_layout(x), self.weight, self.bias)
        return to_twin_layout(apply_activation(y, self.config["activation"], -1))


class BatchNorm(Op):
    """Keras BatchNormalization over one channel dimension of the twin (``dim``); gamma/beta optional apart.

    In training mode torch updates running_var with the unbiased batch variance, Keras with the biased one.
    """

    def __init__(self, num_features, dim, eps, momentum, center=True, scale=True):
        super().__init__(num_features=num_features, dim=dim, eps=eps, momentum=momentum, center=center, scale=scale)
        self.weight = nn.Parameter(torch.ones(num_features)) if scale else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if center else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        dim = self.config["dim"] % x.dim()
        moved = x.movedim(dim, 1) if dim != 1 else x
        y = F.batch_norm(moved, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.config["momentum"], self.config["eps"])
        return y.movedim(1, dim) if dim != 1 else y


class LayerNorm(Op):
    """LayerNormalization over the twin dimensions ``dims``; gamma/beta have the normalized dimensions' shape."""

    def __init__(self, dims, shape, eps, center=True, scale=True):
        super().__init__(dims=dims, shape=shape, eps=eps, center=center, scale=scale)
        self.weight = nn.Parameter(torch.ones(shape)) if scale else None
        self.bias = nn.Parameter(torch.zeros(shape)) if center else None

    def _broadcast(self, p, rank):
        dims = [d % rank for d in self.config["dims"]]
        view = [1] * rank
        for d, n in zip(sorted(dims), p.shape):
            view[d] = n
        return p.reshape(view)

    def forward(self, x):
        dims = [d % x.dim() for d in self.config["dims"]]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.config["eps"])
        if self.weight is not None:
            y = y * self._broadcast(self.weight, x.dim())
        if self.bias is not None:
            y = y + self._broadcast(self.bias, x.dim())
        return y


class Pool(Op):
    """Max/average pooling, rank 1 ((N, steps, C)) or 2 (NCHW), padding valid or TensorFlow's same."""

    def __init__(self, rank, kind, pool_size, strides, padding):
        super().__init__(rank=rank, kind=kind, pool_size=pool_size, strides=strides, padding=padding)

    def forward(self, x):
        c = self.config
        if c["rank"] == 1:
            x = x.transpose(1, 2)
        max_pool = F.max_pool1d if c["rank"] == 1 else F.max_pool2d
        avg_pool = F.avg_pool1d if c["rank"] == 1 else F.avg_pool2d
        pads = same_pads(x.shape[2:], c["pool_size"], c["strides"], [1] * c["rank"]) if c["padding"] == "same" \
            else [0] * (2 * c["rank"])
        padding = symmetric(pads)
        if padding is not None and all(2 * p <= k for p, k in zip(padding, c["pool_size"])):
            # the kernel pads itself: max pooling ignores the padding, average pooling does not count it (as TF)
            if c["kind"] == "max":
                y = max_pool(x, c["pool_size"], c["strides"], padding)
            else:
                y = avg_pool(x, c["pool_size"], c["strides"], padding, count_include_pad=False)
        elif c["kind"] == "max":
            y = max_pool(F.pad(x, pads, value=-math.inf) if any(pads) else x, c["pool_size"], c["strides"])
        elif not any(pads):
            y = avg_pool(x, c["pool_size"], c["strides"])
        else:  # TensorFlow divides by the real pixels in each window, not the padding
            ones = torch.ones_like(x[:1, :1])
            y = avg_pool(F.pad(x, pads), c["pool_size"], c["strides"]) / \
                avg_pool(F.pad(ones, pads), c["pool_size"], c["strides"])
        return y.transpose(1, 2) if c["rank"] == 1 else y


class GlobalPool(Op):
    """Global average/max pooling over the twin's spatial/step ``dims`` (keepdims keeps them as size 1)."""

    def __init__(self, kind, dims, keepdims=False):
        super().__init__(kind=kind, dims=dims, keepdims=keepdims)

    def forward(self, x):
        c = self.config
        if c["kind"] == "avg":
            return x.mean(dim=c["dims"], keepdim=c["keepdims"])
        return x.amax(dim=c["dims"], keepdim=c["keepdims"])


class Pad2d(Op):
    """ZeroPadding2D (positive pads) / Cropping2D (negative pads): [top, bottom, left, right] on NCHW."""

    def __init__(self, pads):
        super().__init__(pads=pads)

    def forward(self, x):
        top, bottom, left, right = self.config["pads"]
        return F.pad(x, [left, right, top, bottom])


class UpSample2d(Op):
    """UpSampling2D: nearest repeats pixels; bilinear is TensorFlow's half-pixel resize (align_corners=False)."""

    def __init__(self, size, interpolation):
        super().__init__(size=size, interpolation=interpolation)

    def forward(self, x):
        c = self.config
        if c["interpolation"] == "nearest":
            return x.repeat_interleave(c["size"][0], 2).repeat_interleave(c["size"][1], 3)
        return F.interpolate(x, scale_factor=tuple(float(s) for s in c["size"]), mode="bilinear",
                             align_corners=False)


class Flatten(Op):
    """Flatten; a rank-4 input is flattened in Keras's H, W, C order unless ``order='chw'`` (the converter then
    permuted the consuming Dense layers' columns instead, which saves a copy)."""

    def __init__(self, order="hwc"):
        super().__init__(order=order)

    def forward(self, x):
        if x.dim() == 4 and self.config["order"] == "hwc":
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)


class Reshape(Op):
    """Reshape (Keras target shape) applied in Keras's layout: exact whatever the ranks on either side."""

    def __init__(self, target_shape):
        super().__init__(target_shape=target_shape)

    def forward(self, x):
        return to_twin_layout(to_keras_layout(x).reshape(x.shape[0], *self.config["target_shape"]))


class Permute(Op):
    """Permute (Keras dims, 1-based, batch excluded) applied in Keras's layout."""

    def __init__(self, dims):
        super().__init__(dims=dims)

    def forward(self, x):
        return to_twin_layout(to_keras_layout(x).permute(0, *self.config["dims"]))


class Merge(Op):
    """Add, Subtract, Multiply, Average, Maximum, Minimum of same-layout tensors (broadcasting as torch does)."""

    def __init__(self, kind):
        super().__init__(kind=kind)

    def forward(self, *xs):
        kind = self.config["kind"]
        if kind == "subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            out = {"add": torch.add, "average": torch.add, "multiply": torch.mul, "maximum": torch.maximum,
                   "minimum": torch.minimum}[kind](out, x)
        return out / len(xs) if kind == "average" else out


class Concat(Op):
    """Concatenate along the twin dimension ``dim`` (Keras's channel axis -1 is dim 1 for rank-4 tensors)."""

    def __init__(self, dim):
        super().__init__(dim=dim)

    def forward(self, *xs):
        return torch.cat(xs, dim=self.config["dim"])


class Activation(Op):
    """Activation / ReLU / LeakyReLU / ELU / Softmax layers; ``dim`` is where softmax normalizes."""

    def __init__(self, name, dim=-1, kwargs=None):
        super().__init__(name=name, dim=dim, kwargs=kwargs or {})

    def forward(self, x):
        return apply_activation(x, self.config["name"], self.config["dim"], **self.config["kwargs"])


class PReLU(Op):
    """PReLU: alpha has the input's shape (twin layout) with shared axes of size 1."""

    def __init__(self, shape):
        super().__init__(shape=shape)
        self.alpha = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        return torch.where(x >= 0, x, self.alpha * x)


class Affine(Op):
    """Rescaling (x*scale + offset) and Normalization ((x-mean)/max(sqrt(var), eps), kept as buffers).

    Constants are stored already broadcast to the twin's layout ([C, 1, 1] for a rank-4 per-channel vector).
    """

    def __init__(self, kind, shape, epsilon=1e-7, invert=False):
        super().__init__(kind=kind, shape=shape, epsilon=epsilon, invert=invert)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("offset", torch.zeros(shape))

    def forward(self, x):
        if self.config["kind"] == "rescale":
            return x * self.scale + self.offset
        std = torch.clamp(torch.sqrt(self.offset), min=self.config["epsilon"])  # offset holds the variance
        if self.config["invert"]:
            return self.scale + x * std
        return (x - self.scale) / std  # scale holds the mean


class Dropout(Op):
    """Dropout / SpatialDropout1D/2D (whole channels) / GaussianNoise / GaussianDropout: identity in eval mode."""

    def __init__(self, kind, rate=0.0, channel_dim=1, noise_shape=None):
        super().__init__(kind=kind, rate=rate, channel_dim=channel_dim, noise_shape=noise_shape)

    def forward(self, x):
        c = self.config
        if not self.training or c["rate"] == 0:
            return x
        if c["kind"] == "noise":
            return x + torch.randn_like(x) * c["rate"]
        if c["kind"] == "gaussian":
            return x * (1 + torch.randn_like(x) * math.sqrt(c["rate"] / (1 - c["rate"])))
        if c["kind"] == "spatial":
            shape = [x.shape[0]] + [1] * (x.dim() - 1)
            shape[c["channel_dim"]] = x.shape[c["channel_dim"]]
            mask = torch.bernoulli(torch.full(shape, 1 - c["rate"], device=x.device, dtype=x.dtype))
            return x * mask / (1 - c["rate"])
        if c["noise_shape"] is not None:  # Keras noise_shape (twin layout; None = the input's size)
            shape = [n if s is None else s for n, s in zip(x.shape, c["noise_shape"])]
            mask = torch.bernoulli(torch.full(shape, 1 - c["rate"], device=x.device, dtype=x.dtype))
            return x * mask / (1 - c["rate"])
        return F.dropout(x, c["rate"], True)


class Embedding(Op):
    """Embedding: integer (or integral float) indices -> vectors."""

    def __init__(self, input_dim, output_dim):
        super().__init__(input_dim=input_dim, output_dim=output_dim)
        self.weight = nn.Parameter(torch.randn(input_dim, output_dim) * 0.05)

    def forward(self, x):
        return F.embedding(x.long(), self.weight)


class Recurrent(Op):
    """LSTM / GRU (Keras defaults: tanh/sigmoid, GRU reset_after=True), batch first; return_sequences or last."""

    def __init__(self, kind, input_size, units, return_sequences=False):
        super().__init__(kind=kind, input_size=input_size, units=units, return_sequences=return_sequences)
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(input_size, units, batch_first=True)

    def forward(self, x):
        y, _ = self.rnn(x)
        return y if self.config["return_sequences"] else y[:, -1]

    def extra_repr(self):
        return f"return_sequences={self.config['return_sequences']}"


OPS = {
    "conv": Conv, "separable_conv": SeparableConv, "conv_transpose": ConvTranspose, "dense": Dense,
    "batch_norm": BatchNorm, "layer_norm": LayerNorm, "pool": Pool, "global_pool": GlobalPool, "pad2d": Pad2d,
    "upsample2d": UpSample2d, "flatten": Flatten, "reshape": Reshape, "permute": Permute, "merge": Merge,
    "concat": Concat, "activation": Activation, "prelu": PReLU, "affine": Affine, "dropout": Dropout,
    "embedding": Embedding, "recurrent": Recurrent,
}
