"""BatchNormalization -> nn.BatchNorm1d/2d/3d, LayerNormalization -> nn.LayerNorm (moved to the normalized
dimensions where torch's own are not Keras's)."""

from __future__ import annotations

import numpy as np

from . import X, Rule, one_axis, register, twin_dim

_BN_NAMES = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
             ("moving_variance", "running_var"))


def check_held(call, state: dict, keys_and_values) -> None:
    """Parameters held fixed because Keras has no such weight must still hold their value when copied back."""
    for key, value in keys_and_values:
        if key in state and not np.all(state[key] == value):
            call.fail(f"{key} is held at {value} (Keras has no such weight) but was changed; keep it frozen")


def _frozen(center: bool, scale: bool) -> list:
    """The affine parameters torch has and Keras does not (center/scale off on one side only): held fixed."""
    if not (center or scale):
        return []
    return ([] if scale else ["weight"]) + ([] if center else ["bias"])


@register("BatchNormalization")
class BatchNormRule(Rule):
    """torch normalizes dimension 1: another Keras axis is swapped there and back around the module.

    In training mode torch updates running_var with the unbiased batch variance, Keras with the biased one.
    """

    def _dim(self, call) -> int:
        cfg = call.config
        axis = one_axis(call, cfg["axis"]) % call.rank
        if axis == 0:
            call.fail("normalisation over the batch axis is not supported")
        if cfg.get("renorm") or cfg.get("synchronized"):
            call.fail("renorm / synchronized batch normalisation is not supported")
        return twin_dim(axis, call.rank)

    def emit(self, call, out):
        cfg, dim = call.config, self._dim(call)
        if call.rank > 5:
            call.fail(f"a rank-{call.rank} input is not supported (torch's BatchNorm is 1-D to 3-D)")
        features = int(call.in_shapes[0][one_axis(call, cfg["axis"]) % call.rank])
        center, scale = bool(cfg["center"]), bool(cfg["scale"])
        cls = {2: "nn.BatchNorm1d", 3: "nn.BatchNorm1d", 4: "nn.BatchNorm2d", 5: "nn.BatchNorm3d"}[call.rank]
        kwargs = dict(eps=float(cfg["epsilon"]), momentum=round(1.0 - float(cfg["momentum"]), 12))
        if not (center or scale):
            kwargs["affine"] = False
        if dim != 1:
            out.method("transpose", X, 1, dim)
        out.call_module(out.add_module(cls, features, frozen=_frozen(center, scale), **kwargs))
        if dim != 1:
            out.method("transpose", X, 1, dim)

    def to_torch(self, call, arrays):
        state = {call.key(t): arrays[k] for k, t in _BN_NAMES if k in arrays}
        state[call.key("num_batches_tracked")] = np.zeros((), np.int64)  # torch's counter (unused: momentum set)
        features = len(arrays["moving_mean"])
        if "gamma" not in arrays and "beta" in arrays:
            state[call.key("weight")] = np.ones(features, np.float32)
        if "beta" not in arrays and "gamma" in arrays:
            state[call.key("bias")] = np.zeros(features, np.float32)
        return state

    def to_keras(self, call, state):
        cfg = call.config
        if cfg["center"] or cfg["scale"]:
            check_held(call, state, [(call.key("weight"), 1.0)] * (not cfg["scale"]) +
                       [(call.key("bias"), 0.0)] * (not cfg["center"]))
        names = [(k, t) for k, t in _BN_NAMES if (k != "gamma" or cfg["scale"]) and (k != "beta" or cfg["center"])]
        return {k: state[call.key(t)] for k, t in names}


@register("LayerNormalization")
class LayerNormRule(Rule):
    """nn.LayerNorm normalizes the last dimensions: other Keras axes are permuted there and back."""

    def _axes(self, call) -> list:
        axis = call.layer.axis
        axes = sorted({int(a) % call.rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])})
        if 0 in axes:
            call.fail("normalisation over the batch axis is not supported")
        return axes

    def _perm(self, call) -> list:
        """Axis order taking Keras's gamma (sorted Keras axes) to torch's (sorted torch dims)."""
        axes = self._axes(call)
        return sorted(range(len(axes)), key=lambda i: twin_dim(axes[i], call.rank))

    def emit(self, call, out):
        cfg = call.config
        if cfg.get("rms_scaling"):
            call.fail("rms_scaling=True is not supported")
        axes = self._axes(call)
        dims = sorted(twin_dim(a, call.rank) for a in axes)
        shape = [int(call.in_shapes[0][axes[i]]) for i in self._perm(call)]
        center, scale = bool(cfg["center"]), bool(cfg["scale"])
        kwargs = dict(eps=float(cfg["epsilon"]))
        if not (center or scale):
            kwargs["elementwise_affine"] = False
        elif not center:
            kwargs["bias"] = False
        trailing = dims == list(range(call.rank - len(dims), call.rank))
        perm = [d for d in range(call.rank) if d not in dims] + dims
        if not trailing:
            out.method("permute", X, *perm)
        out.call_module(out.add_module("nn.LayerNorm", shape, frozen=[] if scale or not center else ["weight"],
                                       **kwargs))
        if not trailing:
            out.method("permute", X, *[int(i) for i in np.argsort(perm)])

    def to_torch(self, call, arrays):
        perm = self._perm(call)
        state = {call.key(t): arrays[k].transpose(perm) for k, t in (("gamma", "weight"), ("beta", "bias"))
                 if k in arrays}
        if "gamma" not in arrays and "beta" in arrays:
            state[call.key("weight")] = np.ones_like(state[call.key("bias")])
        return state

    def to_keras(self, call, state):
        inverse = np.argsort(self._perm(call))
        cfg = call.config
        if cfg["center"] and not cfg["scale"]:
            check_held(call, state, [(call.key("weight"), 1.0)])
        names = [(k, t) for k, t in (("gamma", "weight"), ("beta", "bias")) if cfg[{"gamma": "scale",
                                                                                     "beta": "center"}[k]]]
        return {k: state[call.key(t)].transpose(inverse) for k, t in names}
