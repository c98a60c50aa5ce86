"""Masking -> the steps whose features all equal ``mask_value`` set to zero (Keras: ``where(any(x != mask_value,
axis=-1, keepdims=True), x, 0)``). Its mask, ``any(x != mask_value, axis=-1)``, is two operations of Keras's
graph (converted by the operations rules), read by the layers it reaches (see recurrent.py)."""

from __future__ import annotations

from . import INPUT, X, Rule, register, twin_dim


@register("Masking")
class MaskingRule(Rule):
    def emit(self, call, out):
        value = call.config.get("mask_value", 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            call.fail(f"mask_value {value!r} is not supported (a number is)")
        out.function("torch.ne", X, float(value))
        out.function("torch.any", X, twin_dim(-1, call.rank), True)
        out.function("torch.where", X, INPUT(0), 0.0)
