"""Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate: operators and torch functions."""

from __future__ import annotations

from . import INPUT, INPUTS, X, Rule, register, twin_dim

_PAIRWISE = {"Add": "operator.add", "Average": "operator.add", "Multiply": "operator.mul",
             "Maximum": "torch.maximum", "Minimum": "torch.minimum", "Subtract": "operator.sub"}


@register(*_PAIRWISE)
class MergeRule(Rule):
    def emit(self, call, out):
        ranks = {len(s) for s in call.in_shapes}
        if len(ranks) != 1:
            call.fail(f"inputs of different ranks {call.in_shapes} (broadcasting across layouts is not supported)")
        function = _PAIRWISE[call.kind]
        out.function(function, INPUT(0), INPUT(1))
        for i in range(2, len(call.in_shapes)):
            out.function(function, X, INPUT(i))
        if call.kind == "Average":
            out.function("operator.truediv", X, len(call.in_shapes))


@register("Concatenate")
class ConcatenateRule(Rule):
    def emit(self, call, out):
        out.function("torch.cat", INPUTS, dim=twin_dim(int(call.config["axis"]), call.rank))
