"""MultiHeadAttention -> nn.MultiheadAttention(batch_first=True): self- and cross-attention on (N, steps, features).

nn.MultiheadAttention computes exactly Keras's attention (per-head query/key/value projections, softmax of
q.k / sqrt(key_dim) over the key steps, output projection) when its shapes fit: num_heads * key_dim equal to the
query's features, value_dim equal to key_dim, the output projected back to the query's features
(``output_shape=None``), the default ``attention_axes`` on rank-3 inputs. Masks (``attention_mask``,
``use_causal_mask``) and ``return_attention_scores`` are refused. Key and value may have other feature sizes
(torch's kdim/vdim).
"""

from __future__ import annotations

import numpy as np

from . import INPUT, X, Rule, register


def _input(call, value):
    if isinstance(value, dict) and "input" in value:
        return value["input"]
    call.fail(f"argument {value!r} is not a tensor")


@register("MultiHeadAttention")
class MultiHeadAttentionRule(Rule):
    def _layout(self, call):
        """(query, key, value) input positions and the sizes; refuses what nn.MultiheadAttention cannot do."""
        cfg, arguments = call.config, call.arguments
        if not arguments:
            call.fail("its call arguments could not be read")
        args, kwargs = list(arguments["args"]), dict(arguments["kwargs"])
        names = ["query", "value", "key", "query_mask", "value_mask", "key_mask", "attention_mask",
                 "return_attention_scores", "training", "use_causal_mask"]
        bound = dict(zip(names, args)) | kwargs
        for name in ("attention_mask", "query_mask", "value_mask", "key_mask"):
            if bound.get(name) is not None:
                call.fail(f"{name} is not supported (masks go only into recurrent layers here); drop it or apply it "
                          "outside")
        if bound.get("use_causal_mask") or bound.get("return_attention_scores"):
            call.fail("use_causal_mask / return_attention_scores are not supported")
        query, value = _input(call, bound["query"]), _input(call, bound["value"])
        key = value if bound.get("key") is None else _input(call, bound["key"])
        shapes = call.in_shapes
        if any(len(shapes[i]) != 3 for i in (query, key, value)) or cfg.get("attention_axes") not in (None, [1], (1,)):
            call.fail("only rank-3 (N, steps, features) inputs with the default attention_axes are supported")
        heads, key_dim = int(cfg["num_heads"]), int(cfg["key_dim"])
        value_dim = int(cfg["value_dim"]) if cfg.get("value_dim") is not None else key_dim
        embed = int(shapes[query][-1])
        if heads * key_dim != embed or value_dim != key_dim or cfg.get("output_shape") is not None:
            call.fail(f"num_heads * key_dim = {heads * key_dim}, value_dim {value_dim}, output_shape "
                      f"{cfg.get('output_shape')}: nn.MultiheadAttention needs num_heads * key_dim = the query's "
                      f"features ({embed}), value_dim = key_dim and output_shape=None")
        return query, key, value, embed, heads, int(shapes[key][-1]), int(shapes[value][-1])

    def emit(self, call, out):
        query, key, value, embed, heads, kdim, vdim = self._layout(call)
        bias = bool(call.config.get("use_bias", True))
        kwargs = dict(batch_first=True, **({} if bias else {"bias": False}),
                      **({"kdim": kdim, "vdim": vdim} if (kdim, vdim) != (embed, embed) else {}))
        attr = out.add_module("nn.MultiheadAttention", embed, heads, **kwargs)
        out.call_module(attr, INPUT(query), INPUT(key), INPUT(value), None, False)  # need_weights=False
        out.function("operator.getitem", X, 0)

    def to_torch(self, call, arrays):
        _, _, _, embed, _, kdim, vdim = self._layout(call)
        w = {name: arrays[f"{name}/kernel"].reshape(arrays[f"{name}/kernel"].shape[0], -1).T
             for name in ("query", "key", "value")}
        state = {}
        if (kdim, vdim) == (embed, embed):
            state[call.key("in_proj_weight")] = np.concatenate([w["query"], w["key"], w["value"]])
        else:
            state |= {call.key(f"{n[0]}_proj_weight"): w[n] for n in ("query", "key", "value")}
        output = arrays["attention_output/kernel"]
        state[call.key("out_proj.weight")] = output.reshape(-1, output.shape[-1]).T
        if "query/bias" in arrays:
            state[call.key("in_proj_bias")] = np.concatenate([arrays[f"{n}/bias"].reshape(-1)
                                                              for n in ("query", "key", "value")])
            state[call.key("out_proj.bias")] = arrays["attention_output/bias"]
        return state

    def to_keras(self, call, state):
        _, _, _, embed, heads, kdim, vdim = self._layout(call)
        key_dim = embed // heads
        if (kdim, vdim) == (embed, embed):
            weights = dict(zip(("query", "key", "value"), np.split(state[call.key("in_proj_weight")], 3)))
        else:
            weights = {n: state[call.key(f"{n[0]}_proj_weight")] for n in ("query", "key", "value")}
        out = {f"{n}/kernel": weights[n].T.reshape(-1, heads, key_dim) for n in weights}
        projection = state[call.key("out_proj.weight")]
        out["attention_output/kernel"] = projection.T.reshape(heads, key_dim, -1)
        if call.key("in_proj_bias") in state:
            for n, b in zip(("query", "key", "value"), np.split(state[call.key("in_proj_bias")], 3)):
                out[f"{n}/bias"] = b.reshape(heads, key_dim)
            out["attention_output/bias"] = state[call.key("out_proj.bias")]
        return out
