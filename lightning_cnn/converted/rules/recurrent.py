"""LSTM, GRU -> nn.LSTM / nn.GRU (batch_first=True) with Keras's defaults; return_sequences or the last step."""

from __future__ import annotations

import numpy as np

from . import X, Rule, need_rank, register

_GRU_TO_TORCH = (1, 0, 2)  # Keras gates z, r, h -> torch r, z, n (the permutation is its own inverse)


def _gate_blocks(array, axis, order):
    blocks = np.split(array, 3, axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


@register("LSTM", "GRU")
class RecurrentRule(Rule):
    def emit(self, call, out):
        need_rank(call, 3)
        cfg = call.config
        defaults = dict(activation="tanh", recurrent_activation="sigmoid", use_bias=True, return_state=False,
                        go_backwards=False, stateful=False)
        if call.kind == "GRU":
            defaults["reset_after"] = True
        wrong = {k: cfg.get(k) for k, v in defaults.items() if cfg.get(k, v) != v}
        if wrong:
            call.fail(f"{wrong} is not supported (torch's nn.{call.kind} computes Keras's defaults {defaults})")
        out.call_module(out.add_module(f"nn.{call.kind}", int(call.in_shapes[0][-1]), int(cfg["units"]),
                                       batch_first=True))
        out.function("operator.getitem", X, 0)  # the outputs (the final states are not used)
        if not cfg["return_sequences"]:
            out.method("select", X, 1, -1)

    def to_torch(self, call, arrays):
        kernel, recurrent = arrays["kernel"], arrays["recurrent_kernel"]
        if call.kind == "LSTM":  # gates i, f, c, o on both sides; one Keras bias = torch b_ih + b_hh
            b_ih, b_hh = arrays["bias"], np.zeros_like(arrays["bias"])
        else:
            kernel, recurrent = _gate_blocks(kernel, 1, _GRU_TO_TORCH), _gate_blocks(recurrent, 1, _GRU_TO_TORCH)
            b_ih, b_hh = (_gate_blocks(b, 0, _GRU_TO_TORCH) for b in arrays["bias"])
        return {call.key("weight_ih_l0"): kernel.T, call.key("weight_hh_l0"): recurrent.T,
                call.key("bias_ih_l0"): b_ih, call.key("bias_hh_l0"): b_hh}

    def to_keras(self, call, state):
        kernel, recurrent = state[call.key("weight_ih_l0")].T, state[call.key("weight_hh_l0")].T
        b_ih, b_hh = state[call.key("bias_ih_l0")], state[call.key("bias_hh_l0")]
        if call.kind == "LSTM":
            return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": b_ih + b_hh}
        return {"kernel": _gate_blocks(kernel, 1, _GRU_TO_TORCH),
                "recurrent_kernel": _gate_blocks(recurrent, 1, _GRU_TO_TORCH),
                "bias": np.stack([_gate_blocks(b, 0, _GRU_TO_TORCH) for b in (b_ih, b_hh)])}
