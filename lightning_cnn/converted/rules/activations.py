"""Activation, ReLU, LeakyReLU, ELU, Softmax, PReLU, and the activations fused into other layers."""

from __future__ import annotations

import numpy as np

from . import Emitter, LayerCall, Rule, X, from_twin_array, one_axis, register, to_twin_array, twin_dim

# Keras activation name -> (torch function, extra positional arguments); softmax-like ones also take the dim.
ACTIVATIONS = {
    "linear": None, "relu": ("torch.relu",), "relu6": ("F.relu6",), "leaky_relu": ("F.leaky_relu", 0.2),
    "elu": ("F.elu",), "selu": ("F.selu",), "gelu": ("F.gelu",), "silu": ("F.silu",), "mish": ("F.mish",),
    "sigmoid": ("torch.sigmoid",), "hard_sigmoid": ("F.hardsigmoid",),  # Keras 3's: relu6(x + 3) / 6
    "hard_silu": ("F.hardswish",), "tanh": ("torch.tanh",), "softplus": ("F.softplus",),
    "softsign": ("F.softsign",), "exponential": ("torch.exp",), "softmax": ("torch.softmax",),
    "log_softmax": ("torch.log_softmax",),
}
_OVER_A_DIM = ("softmax", "log_softmax")


def activation_name(call: LayerCall, fn=None) -> str:
    fn = fn if fn is not None else call.layer.activation
    name = getattr(fn, "__name__", None)
    if name not in ACTIVATIONS:
        call.fail(f"activation {name or fn!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))}); "
                  "use one of them or add it to lightning_cnn/converted/rules/activations.py")
    return name


def emit_activation(out: Emitter, name: str, dim: int) -> None:
    """The step computing Keras activation ``name``; ``dim`` is where softmax normalizes (torch's dimension)."""
    entry = ACTIVATIONS[name]
    if entry is None:
        return
    function, *extra = entry
    out.function(function, X, *extra, **({"dim": dim} if name in _OVER_A_DIM else {}))


@register("Activation")
class ActivationRule(Rule):
    def emit(self, call, out):
        emit_activation(out, activation_name(call), twin_dim(-1, call.rank))


@register("ReLU")
class ReLURule(Rule):
    def emit(self, call, out):
        cfg = call.config
        slope, threshold, max_value = float(cfg.get("negative_slope", 0.0)), float(cfg.get("threshold", 0.0)), \
            cfg.get("max_value")
        if slope == 0 and threshold == 0:
            if max_value is None:
                out.function("torch.relu", X)
            elif float(max_value) == 6.0:
                out.function("F.relu6", X)
            else:
                out.function("torch.clamp", X, 0.0, float(max_value))
            return
        out.call_module(out.add_module("KerasReLU", negative_slope=slope, threshold=threshold,
                                       max_value=None if max_value is None else float(max_value)))


@register("LeakyReLU")
class LeakyReLURule(Rule):
    def emit(self, call, out):
        out.function("F.leaky_relu", X, float(call.config["negative_slope"]))


@register("ELU")
class ELURule(Rule):
    def emit(self, call, out):
        alpha = float(call.config.get("alpha", 1.0))
        out.function("F.elu", X, *([alpha] if alpha != 1.0 else []))


@register("Softmax")
class SoftmaxRule(Rule):
    def emit(self, call, out):
        out.function("torch.softmax", X, dim=twin_dim(one_axis(call, call.config.get("axis", -1)), call.rank))


def _prelu_shape(call) -> tuple:
    return to_twin_array(np.zeros(tuple(call.layer.alpha.shape)), call.rank).shape


@register("PReLU")
class PReLURule(Rule):
    """One slope per channel is ``nn.PReLU(C)``; per-element slopes need the helper ``ElementwisePReLU``."""

    @staticmethod
    def per_channel(call) -> bool:
        shape = _prelu_shape(call)
        return call.rank >= 2 and len(shape) == call.rank - 1 and all(n == 1 for n in shape[1:])

    def emit(self, call, out):
        shape = _prelu_shape(call)
        if self.per_channel(call):
            out.call_module(out.add_module("nn.PReLU", shape[0], init=0.0))
        else:
            out.call_module(out.add_module("ElementwisePReLU", list(shape)))

    def to_torch(self, call, arrays):
        alpha = to_twin_array(arrays["alpha"], call.rank)
        return {call.key("weight"): alpha.reshape(-1) if self.per_channel(call) else alpha}

    def to_keras(self, call, state):
        alpha = state[call.key("weight")].reshape(_prelu_shape(call))
        return {"alpha": from_twin_array(alpha, call.rank)}
