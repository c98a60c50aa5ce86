"""ZeroPadding2D, Cropping2D, UpSampling2D, Flatten, Reshape, Permute: stock modules or tensor methods."""

from __future__ import annotations

import numpy as np

from . import X, Rule, channels_last, need_rank, pairs, register, to_keras_layout, to_twin_layout


@register("ZeroPadding2D", "Cropping2D")
class PadRule(Rule):
    """ZeroPadding2D -> nn.ZeroPad2d; Cropping2D -> F.pad with negative amounts (a crop)."""

    def emit(self, call, out):
        need_rank(call, 4)
        channels_last(call)
        if call.kind == "ZeroPadding2D":
            (top, bottom), (left, right) = call.layer.padding
            out.call_module(out.add_module("nn.ZeroPad2d", [int(left), int(right), int(top), int(bottom)]))
        else:
            (top, bottom), (left, right) = call.layer.cropping
            out.function("F.pad", X, [-int(left), -int(right), -int(top), -int(bottom)])


def _exact_nearest(factor: int) -> bool:
    """torch's nearest upsampling reads source pixel floor(i * float32(1/factor)): exact unless 1/factor rounds
    down in float32 (then repeat_interleave, which is exact, is written instead)."""
    return float(np.float32(1.0) / np.float32(factor)) * factor >= 1.0


@register("UpSampling2D")
class UpSamplingRule(Rule):
    def emit(self, call, out):
        need_rank(call, 4)
        channels_last(call)
        cfg = call.config
        size = pairs(cfg["size"], 2)
        if cfg["interpolation"] not in ("nearest", "bilinear"):
            call.fail(f"interpolation {cfg['interpolation']!r} is not supported (nearest, bilinear)")
        if cfg["interpolation"] == "nearest" and not all(_exact_nearest(s) for s in size):
            out.method("repeat_interleave", X, size[0], 2)
            out.method("repeat_interleave", X, size[1], 3)
            return
        kwargs = dict(mode="nearest") if cfg["interpolation"] == "nearest" else dict(mode="bilinear",
                                                                                      align_corners=False)
        out.call_module(out.add_module("nn.Upsample", scale_factor=[float(s) for s in size], **kwargs))


@register("Flatten")
class FlattenRule(Rule):
    """An NCHW image flattens in Keras's H, W, C order, unless only Dense layers read it (``call.flatten_chw``:
    those Dense layers' columns are permuted instead, which saves a copy)."""

    def emit(self, call, out):
        channels_last(call)
        if call.rank == 4 and not call.flatten_chw:
            out.method("permute", X, 0, 2, 3, 1)
        out.method("flatten", X, 1)


@register("Reshape")
class ReshapeRule(Rule):
    """Reshape to Keras's target shape, applied in Keras's layout whatever the ranks on either side."""

    def emit(self, call, out):
        target = [int(d) for d in call.config["target_shape"]]
        to_keras_layout(out, call.rank)
        if -1 in target:
            out.method("flatten", X, 1)
            out.method("unflatten", X, 1, target)
        else:
            out.method("reshape", X, -1, *target)
        to_twin_layout(out, len(target) + 1)


@register("Permute")
class PermuteRule(Rule):
    """Keras's dims (1-based, batch excluded) composed with the layout moves into one torch permute."""

    def emit(self, call, out):
        dims = [0] + [int(d) for d in call.config["dims"]]
        rank = len(dims)
        to_keras = (0, 2, 3, 1) if rank == 4 else tuple(range(rank))
        to_twin = (0, 3, 1, 2) if rank == 4 else tuple(range(rank))
        perm = [to_keras[dims[to_twin[j]]] for j in range(rank)]
        out.method("permute", X, *perm)
