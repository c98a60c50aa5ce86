"""Dense -> nn.Linear on the last Keras axis (an NCHW image is moved to NHWC around it)."""

from __future__ import annotations

from . import Rule, register, to_keras_layout, to_twin_layout, with_bias
from .activations import activation_name, emit_activation


@register("Dense")
class DenseRule(Rule):
    """After a channels-first Flatten of an (H, W, C) tensor (``call.flatten_hwc``), the input columns are
    permuted from Keras's H,W,C order to C,H,W instead of copying the image to NHWC at run time."""

    def emit(self, call, out):
        cfg = call.config
        activation = activation_name(call)
        to_keras_layout(out, call.rank)
        out.call_module(out.add_module("nn.Linear", int(call.in_shapes[0][-1]), int(cfg["units"]),
                                       **({} if cfg["use_bias"] else {"bias": False})))
        emit_activation(out, activation, -1)
        to_twin_layout(out, call.rank)

    def to_torch(self, call, arrays):
        kernel = arrays["kernel"]
        if call.flatten_hwc is not None:
            h, w, c = call.flatten_hwc
            kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        return with_bias(arrays, call.key("bias"), {call.key("weight"): kernel.T})

    def to_keras(self, call, state):
        kernel = state[call.key("weight")].T
        if call.flatten_hwc is not None:
            h, w, c = call.flatten_hwc
            kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
        bias = state.get(call.key("bias"))
        return {"kernel": kernel} | ({"bias": bias} if bias is not None else {})
