"""Layers keras.applications defines in its own modules: ConvNeXt's LayerScale, InceptionResNetV2's
CustomScaleLayer."""

from __future__ import annotations

import numpy as np

from . import INPUT, X, Rule, from_twin_array, register, to_twin_array


@register("LayerScale")
class LayerScaleRule(Rule):
    """x * gamma (one learned factor per channel) -> the LayerScale helper, gamma as (C, 1, 1) on NCHW images."""

    def emit(self, call, out):
        shape = to_twin_array(np.zeros(tuple(call.layer.gamma.shape)), call.rank).shape
        out.call_module(out.add_module("LayerScale", list(shape)))

    def to_torch(self, call, arrays):
        (gamma,) = arrays.values()
        return {call.key("weight"): to_twin_array(gamma, call.rank)}

    def to_keras(self, call, state):
        (name,) = [w.name for w in call.layer.weights]
        return {name: from_twin_array(state[call.key("weight")], call.rank).reshape(-1)}


@register("CustomScaleLayer")
class CustomScaleRule(Rule):
    """inputs[0] + inputs[1] * scale (the residual scaling of Inception-ResNet blocks)."""

    def emit(self, call, out):
        out.function("operator.mul", INPUT(1), float(call.config["scale"]))
        out.function("operator.add", INPUT(0), X)
