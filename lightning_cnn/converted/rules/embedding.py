"""Embedding -> nn.Embedding (integer or integral float indices). With mask_zero=True Keras records the mask as
its own ``not_equal(ids, 0)`` operation in the graph (converted by the operations rules), read by the layers it
reaches (see recurrent.py); the embedding itself is unchanged."""

from __future__ import annotations

from . import X, Rule, register


@register("Embedding")
class EmbeddingRule(Rule):
    def emit(self, call, out):
        cfg = call.config
        out.method("long", X)
        out.call_module(out.add_module("nn.Embedding", int(cfg["input_dim"]), int(cfg["output_dim"])))

    def to_torch(self, call, arrays):
        return {call.key("weight"): arrays["embeddings"]}

    def to_keras(self, call, state):
        return {"embeddings": state[call.key("weight")]}
