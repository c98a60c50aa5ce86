"""Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose -> nn.Conv1d / nn.Conv2d /
nn.ConvTranspose2d, with TensorFlow's 'same' padding as constant pads when the sizes are known."""

from __future__ import annotations

from ...nets.layers import tf_same_pads
from . import (Emitter, LayerCall, Rule, X, swap_sequence_channels, channels_last, need_rank, pairs, register,
               symmetric_padding, with_bias)
from .activations import activation_name, emit_activation


def _options(call: LayerCall, rank: int) -> dict:
    cfg = call.config
    return dict(kernel=pairs(cfg["kernel_size"], rank), strides=pairs(cfg["strides"], rank),
                dilation=pairs(cfg["dilation_rate"], rank), padding=cfg["padding"])


def emit_padding(call: LayerCall, out: Emitter, kernel, strides, dilation, padding) -> list | int:
    """Steps padding the input as Keras does; returns the padding the torch module applies itself."""
    if padding == "causal":
        out.function("F.pad", X, [(kernel[0] - 1) * dilation[0], 0])
        return 0
    if padding != "same":
        return 0
    sizes = call.in_shapes[0][1:-1]
    if any(size is None for size in sizes):  # unknown size: TF's pads computed at run time
        out.call_module(out.add_module("SamePad", kernel, strides, dilation, role="pad"))
        return 0
    pads = tf_same_pads(sizes, kernel, strides, dilation)
    symmetric = symmetric_padding(pads)
    if symmetric is not None:
        return symmetric if any(symmetric) else 0
    out.function("F.pad", X, pads)  # TensorFlow's extra row/column at the bottom/right
    return 0


def conv_kwargs(strides, padding, dilation, groups=1, bias=True) -> dict:
    """nn.ConvNd's keyword arguments, those at their default left out (as one would write them)."""
    kwargs = dict(stride=strides, padding=padding, dilation=dilation, groups=groups, bias=bias)
    defaults = dict(stride=[1] * len(strides), padding=0, dilation=[1] * len(strides), groups=1, bias=True)
    return {k: v for k, v in kwargs.items() if v != defaults[k]}


def _kernel_k2t(kernel):  # Keras (*spatial, in, out) -> torch (out, in, *spatial)
    rank = kernel.ndim - 2
    return kernel.transpose(rank + 1, rank, *range(rank))


def _kernel_t2k(weight):
    rank = weight.ndim - 2
    return weight.transpose(*range(2, rank + 2), 1, 0)


def _depthwise_k2t(kernel):  # (kh, kw, in, mult) -> (in*mult, 1, kh, kw): output channel c*mult + m
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]


def _depthwise_t2k(weight, mult):
    out, _, kh, kw = weight.shape
    return weight[:, 0].transpose(1, 2, 0).reshape(kh, kw, out // mult, mult)


@register("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D")
class ConvRule(Rule):
    """Conv1D takes (N, steps, C) like Keras: transposed to channels first around the nn.Conv1d; Conv3D takes
    Keras's (N, D, H, W, C) volume, permuted to channels first around the nn.Conv3d."""

    def emit(self, call, out):
        rank = {"Conv1D": 1, "Conv3D": 3}.get(call.kind, 2)
        need_rank(call, rank + 2)
        channels_last(call)
        o, cfg = _options(call, rank), call.config
        if o["padding"] not in ("valid", "same") + (("causal",) if rank == 1 else ()):
            call.fail(f"padding {o['padding']!r} is not supported")
        in_channels = int(call.in_shapes[0][-1])
        if call.kind == "DepthwiseConv2D":
            filters, groups = in_channels * int(cfg["depth_multiplier"]), in_channels
        else:
            filters, groups = int(cfg["filters"]), int(cfg.get("groups", 1))
        activation = activation_name(call)
        swap_sequence_channels(out, call.rank)
        padding = emit_padding(call, out, o["kernel"], o["strides"], o["dilation"], o["padding"])
        attr = out.add_module(f"nn.Conv{rank}d", in_channels, filters, o["kernel"],
                              **conv_kwargs(o["strides"], padding, o["dilation"], groups, bool(cfg["use_bias"])))
        out.call_module(attr)
        emit_activation(out, activation, 1)
        swap_sequence_channels(out, call.rank, back=True)

    def to_torch(self, call, arrays):
        if call.kind == "DepthwiseConv2D":
            return with_bias(arrays, call.key("bias"), {call.key("weight"): _depthwise_k2t(arrays["kernel"])})
        return with_bias(arrays, call.key("bias"), {call.key("weight"): _kernel_k2t(arrays["kernel"])})

    def to_keras(self, call, state):
        weight = state[call.key("weight")]
        if call.kind == "DepthwiseConv2D":
            kernel = _depthwise_t2k(weight, int(call.config["depth_multiplier"]))
        else:
            kernel = _kernel_t2k(weight)
        bias = state.get(call.key("bias"))
        return {"kernel": kernel} | ({"bias": bias} if bias is not None else {})


@register("SeparableConv2D")
class SeparableConvRule(Rule):
    """A depthwise nn.Conv2d (groups=in, no bias) then a 1x1 pointwise nn.Conv2d with Keras's bias."""

    def emit(self, call, out):
        need_rank(call, 4)
        channels_last(call)
        o, cfg = _options(call, 2), call.config
        if o["padding"] not in ("valid", "same"):
            call.fail(f"padding {o['padding']!r} is not supported")
        in_channels = int(call.in_shapes[0][-1])
        mid = in_channels * int(cfg["depth_multiplier"])
        activation = activation_name(call)
        padding = emit_padding(call, out, o["kernel"], o["strides"], o["dilation"], o["padding"])
        out.call_module(out.add_module("nn.Conv2d", in_channels, mid, o["kernel"], role="depthwise",
                                       **conv_kwargs(o["strides"], padding, o["dilation"], in_channels, False)))
        out.call_module(out.add_module("nn.Conv2d", mid, int(cfg["filters"]), 1, role="pointwise",
                                       **({} if cfg["use_bias"] else {"bias": False})))
        emit_activation(out, activation, 1)

    def to_torch(self, call, arrays):
        state = {call.key("weight", "depthwise"): _depthwise_k2t(arrays["depthwise_kernel"]),
                 call.key("weight", "pointwise"): _kernel_k2t(arrays["pointwise_kernel"])}
        return with_bias(arrays, call.key("bias", "pointwise"), state)

    def to_keras(self, call, state):
        arrays = {"depthwise_kernel": _depthwise_t2k(state[call.key("weight", "depthwise")],
                                                     int(call.config["depth_multiplier"])),
                  "pointwise_kernel": _kernel_t2k(state[call.key("weight", "pointwise")])}
        bias = state.get(call.key("bias", "pointwise"))
        return arrays | ({"bias": bias} if bias is not None else {})


@register("Conv2DTranspose")
class ConvTransposeRule(Rule):
    """nn.ConvTranspose2d without padding, ``output_padding`` where the kernel is smaller than the stride (TF pads
    those pixels and adds the bias to them too), then TF's crop for 'same' (as F.pad with negative amounts)."""

    def emit(self, call, out):
        need_rank(call, 4)
        channels_last(call)
        o, cfg = _options(call, 2), call.config
        if cfg.get("output_padding") is not None:
            call.fail("output_padding is not supported")
        if o["padding"] not in ("valid", "same"):
            call.fail(f"padding {o['padding']!r} is not supported")
        activation = activation_name(call)
        spans = [(k - 1) * d + 1 for k, d in zip(o["kernel"], o["dilation"])]
        extra = [max(s - k, 0) for k, s in zip(spans, o["strides"])]
        kwargs = conv_kwargs(o["strides"], 0, o["dilation"], 1, bool(cfg["use_bias"]))
        if any(extra):
            kwargs["output_padding"] = extra
        out.call_module(out.add_module("nn.ConvTranspose2d", int(call.in_shapes[0][-1]), int(cfg["filters"]),
                                       o["kernel"], **kwargs))
        if o["padding"] == "same":
            crops = []
            for k, s in reversed(list(zip(spans, o["strides"]))):  # F.pad order: last dimension first
                total = max(k - s, 0)
                crops += [-(total // 2), -(total - total // 2)]
            if any(crops):
                out.function("F.pad", X, crops)
        emit_activation(out, activation, 1)

    def to_torch(self, call, arrays):  # Keras (kh, kw, out, in) -> torch (in, out, kh, kw)
        return with_bias(arrays, call.key("bias"), {call.key("weight"): arrays["kernel"].transpose(3, 2, 0, 1)})

    def to_keras(self, call, state):
        bias = state.get(call.key("bias"))
        return {"kernel": state[call.key("weight")].transpose(2, 3, 1, 0)} | ({"bias": bias} if bias is not None
                                                                             else {})
