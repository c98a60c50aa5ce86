"""MaxPooling1D/2D/3D, AveragePooling1D/2D/3D -> nn.MaxPool / nn.AvgPool (TF 'same' via the SamePool helper where torch's
symmetric padding differs); GlobalAveragePooling / GlobalMaxPooling 1D/2D/3D -> mean / amax over the spatial dims."""

from __future__ import annotations

from ...nets.layers import tf_same_pads
from . import X, Rule, swap_sequence_channels, channels_last, need_rank, pairs, register, symmetric_padding


@register("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
          "AveragePooling3D")
class PoolRule(Rule):
    def emit(self, call, out):
        rank = int(call.kind[-2])
        need_rank(call, rank + 2)
        channels_last(call)
        cfg = call.config
        if cfg["padding"] not in ("valid", "same"):
            call.fail(f"padding {cfg['padding']!r} is not supported")
        kind = "max" if call.kind.startswith("Max") else "avg"
        pool = pairs(cfg["pool_size"], rank)
        strides = pairs(cfg["strides"] if cfg["strides"] is not None else cfg["pool_size"], rank)
        cls = f"nn.{'Max' if kind == 'max' else 'Avg'}Pool{rank}d"
        kwargs = {} if strides == pool else dict(stride=strides)
        sizes = call.in_shapes[0][1:-1]
        swap_sequence_channels(out, call.rank)
        if cfg["padding"] == "same":
            padding = None
            if all(size is not None for size in sizes):
                padding = symmetric_padding(tf_same_pads(sizes, pool, strides, [1] * rank))
            if padding is None or any(2 * p > k for p, k in zip(padding, pool)):
                out.call_module(out.add_module("SamePool", kind, pool, strides))
                swap_sequence_channels(out, call.rank, back=True)
                return
            if any(padding):  # torch pads itself: max ignores the padding, average does not count it (as TF)
                kwargs |= dict(padding=padding) | ({} if kind == "max" else dict(count_include_pad=False))
        out.call_module(out.add_module(cls, pool, **kwargs))
        swap_sequence_channels(out, call.rank, back=True)


@register("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
          "GlobalMaxPooling2D", "GlobalMaxPooling3D")
class GlobalPoolRule(Rule):
    def emit(self, call, out):
        need_rank(call, int(call.kind[-2]) + 2)
        channels_last(call)
        dims = {3: [1], 4: [2, 3], 5: [1, 2, 3]}[call.rank]  # (a volume keeps Keras's N, D, H, W, C)
        keepdims = bool(call.config.get("keepdims", False))
        out.method("mean" if "Average" in call.kind else "amax", X, dims, **({"keepdim": True} if keepdims else {}))
