"""RandomFlip, RandomRotation, RandomTranslation, RandomZoom, RandomContrast, RandomBrightness: identity in eval
mode (as Keras at inference), and in training mode a random transform of the same kind and range (the helpers of
``lightning_cnn.nets.layers``; torch draws its own random numbers, so the images differ from Keras's draws)."""

from __future__ import annotations

from . import Rule, channels_last, need_rank, register


def _bounds(value) -> list:
    """A Keras factor: a number f means (-f, f); a pair is (lower, upper)."""
    if isinstance(value, (list, tuple)):
        return sorted(float(v) for v in value)
    return [-abs(float(value)), abs(float(value))]


def _fill(call) -> dict:
    cfg = call.config
    if cfg.get("fill_mode", "reflect") not in ("reflect", "wrap", "nearest", "constant"):
        call.fail(f"fill_mode {cfg['fill_mode']!r} is not supported (reflect, wrap, nearest, constant)")
    if cfg.get("interpolation", "bilinear") not in ("bilinear", "nearest"):
        call.fail(f"interpolation {cfg['interpolation']!r} is not supported (bilinear, nearest)")
    return dict(fill_mode=cfg.get("fill_mode", "reflect"), interpolation=cfg.get("interpolation", "bilinear"),
                fill_value=float(cfg.get("fill_value", 0.0)))


@register("RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomContrast", "RandomBrightness")
class AugmentationRule(Rule):
    def emit(self, call, out):
        need_rank(call, 4)
        channels_last(call)
        cfg, kind = call.config, call.kind
        if kind == "RandomFlip":
            mode = cfg["mode"]
            out.call_module(out.add_module("RandomFlip", horizontal="horizontal" in mode, vertical="vertical" in mode))
        elif kind == "RandomRotation":
            out.call_module(out.add_module("RandomAffine", rotation=_bounds(cfg["factor"]), **_fill(call)))
        elif kind == "RandomTranslation":
            out.call_module(out.add_module("RandomAffine", height_shift=_bounds(cfg["height_factor"]),
                                           width_shift=_bounds(cfg["width_factor"]), **_fill(call)))
        elif kind == "RandomZoom":
            width = cfg.get("width_factor")
            out.call_module(out.add_module("RandomAffine", height_zoom=_bounds(cfg["height_factor"]),
                                           width_zoom=None if width is None else _bounds(width), **_fill(call)))
        else:
            lower, upper = (float(v) for v in cfg["factor"])  # (RandomContrast: Keras draws in [1-lower, 1+upper])
            out.call_module(out.add_module(kind, lower, upper, value_range=[float(v) for v in cfg["value_range"]]))
