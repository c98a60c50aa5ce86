"""Rescaling -> x * scale + offset (the Rescale helper for per-channel constants); Normalization -> Normalize."""

from __future__ import annotations

import numpy as np

from . import X, Rule, from_twin_array, register, to_twin_array


def _constants(call):
    cfg = call.config
    return to_twin_array(cfg["scale"], call.rank), to_twin_array(cfg["offset"], call.rank)


@register("Rescaling")
class RescalingRule(Rule):
    def emit(self, call, out):
        scale, offset = _constants(call)
        if scale.ndim == 0 and offset.ndim == 0:
            out.function("operator.mul", X, float(scale))
            if float(offset) != 0.0:
                out.function("operator.add", X, float(offset))
            return
        out.call_module(out.add_module("Rescale", list(np.broadcast_shapes(scale.shape, offset.shape))))

    def to_torch(self, call, arrays):
        scale, offset = _constants(call)
        if scale.ndim == 0 and offset.ndim == 0:
            return {}
        shape = np.broadcast_shapes(scale.shape, offset.shape)
        return {call.key("scale"): np.broadcast_to(scale, shape), call.key("offset"): np.broadcast_to(offset, shape)}


@register("Normalization")
class NormalizationRule(Rule):
    """(x - mean) / max(sqrt(variance), epsilon) with Keras's epsilon (``keras.config.epsilon()``), or its inverse."""

    def _statistics(self, call):
        if call.layer.mean is None:
            call.fail("is not adapted: call adapt() or pass mean/variance before converting")
        return np.asarray(call.layer.mean)[0], np.asarray(call.layer.variance)[0]

    def emit(self, call, out):
        mean, _ = self._statistics(call)
        out.call_module(out.add_module("Normalize", list(to_twin_array(mean, call.rank).shape),
                                       epsilon=float(call.epsilon), invert=bool(call.config.get("invert", False))))

    def to_torch(self, call, arrays):
        mean, variance = self._statistics(call)
        return {call.key("mean"): to_twin_array(mean, call.rank),
                call.key("variance"): to_twin_array(variance, call.rank)}

    def to_keras(self, call, state):
        shapes = {w.name: tuple(w.shape) for w in call.layer.weights}
        return {k: from_twin_array(state[call.key(k)], call.rank).reshape(shapes[k]) for k in ("mean", "variance")
                if k in shapes}
