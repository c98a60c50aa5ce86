"""Embedding -> nn.Embedding (integer or integral float indices)."""

from __future__ import annotations

from . import X, Rule, register


@register("Embedding")
class EmbeddingRule(Rule):
    def emit(self, call, out):
        cfg = call.config
        if cfg.get("mask_zero"):
            call.fail("mask_zero=True is not supported (masking has no torch counterpart here); convert a model "
                      "without mask_zero")
        out.method("long", X)
        out.call_module(out.add_module("nn.Embedding", int(cfg["input_dim"]), int(cfg["output_dim"])))

    def to_torch(self, call, arrays):
        return {call.key("weight"): arrays["embeddings"]}

    def to_keras(self, call, state):
        return {"embeddings": state[call.key("weight")]}
