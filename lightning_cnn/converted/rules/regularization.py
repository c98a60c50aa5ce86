"""Dropout, SpatialDropout1D/2D, GaussianNoise, GaussianDropout: identity in eval mode (as Keras), the same
random transform in training mode."""

from __future__ import annotations

from . import X, Rule, register


@register("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")
class DropoutRule(Rule):
    def emit(self, call, out):
        cfg = call.config
        if call.kind == "GaussianNoise":
            out.call_module(out.add_module("GaussianNoise", float(cfg["stddev"])))
        elif call.kind == "GaussianDropout":
            out.call_module(out.add_module("GaussianDropout", float(cfg["rate"])))
        elif call.kind == "SpatialDropout2D":  # whole channels of an NCHW image
            out.call_module(out.add_module("nn.Dropout2d", float(cfg["rate"])))
        elif call.kind == "SpatialDropout1D":  # whole channels of (N, steps, C): channels first around it
            out.method("transpose", X, 1, 2)
            out.call_module(out.add_module("nn.Dropout1d", float(cfg["rate"])))
            out.method("transpose", X, 1, 2)
        elif cfg.get("noise_shape") is not None:
            shape = [None if d is None else int(d) for d in cfg["noise_shape"]]
            shape = [shape[a] for a in (0, 3, 1, 2)] if len(shape) == 4 else shape
            out.call_module(out.add_module("NoiseShapeDropout", float(cfg["rate"]), shape))
        else:
            out.call_module(out.add_module("nn.Dropout", float(cfg["rate"])))
