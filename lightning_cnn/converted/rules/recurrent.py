"""LSTM, GRU, SimpleRNN, Bidirectional, TimeDistributed, RepeatVector -> nn.LSTM / nn.GRU / nn.RNN
(batch_first=True) and tensor methods.

Keras's defaults for the cells (tanh/sigmoid; GRU reset_after=True, torch's formulation); ``return_sequences``
either way, ``go_backwards`` (the sequence flipped first: Keras returns the outputs in processing order),
``return_state`` (the final h (and c) as extra results). Bidirectional is one torch RNN with
``bidirectional=True``: its outputs are Keras's ``merge_mode='concat'`` ([forward, backward] per step, the
backward outputs re-aligned with time); without return_sequences Keras concatenates the two final states (h_n).
TimeDistributed runs its layer's rule on (N * steps, ...) and unflattens.

Masks (Keras 3.15, measured: parity_tests/test_convert_masking.py). Keras records a mask as an ordinary tensor
of the graph (``Embedding(mask_zero=True)``: ``ids != 0``; ``Masking``: any feature != mask_value), passed to
each layer whose ``call`` takes ``mask`` (RNNs, TimeDistributed, pooling, attention, BatchNormalization); layers
without one (Dense, Dropout, Activation, LayerNormalization...) ignore it and hand it on unchanged, an RNN with
return_sequences too. A masked RNN step leaves the state (h, and c) as it was and outputs the previous output
(zeros before the first kept step; an all-masked row gives zeros and zero states), wherever the masked steps are
(start, end, middle); ``go_backwards`` flips the mask with the sequence (outputs in processing order), the mask
handed on stays unflipped; without return_sequences the result is the last kept step's output.
Bidirectional sets ``zero_output_for_mask`` = return_sequences on both RNNs: masked steps output zeros in both
halves, and the backward RNN starts from the last kept step. The stock torch module cannot skip steps: a masked
call is ``masked_rnn(module, x, mask)`` (lightning_cnn.nets.layers, written into model.py) on the same module and
weights; an unmasked call is the module itself, as before.
"""

from __future__ import annotations

import numpy as np

from . import INPUT, SUBMODULE, LayerCall, Rule, X, need_rank, register, to_keras_layout, to_twin_layout

_GRU_TO_TORCH = (1, 0, 2)  # Keras gates z, r, h -> torch r, z, n (the permutation is its own inverse)
_MODULES = {"LSTM": "nn.LSTM", "GRU": "nn.GRU", "SimpleRNN": "nn.RNN"}


def _gate_blocks(array, axis, order):
    blocks = np.split(array, 3, axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


def _check_cell(call, cfg: dict, kind: str) -> None:
    defaults = dict(activation="tanh", use_bias=True, stateful=False)
    if kind != "SimpleRNN":
        defaults["recurrent_activation"] = "sigmoid"
    if kind == "GRU":
        defaults["reset_after"] = True
    if kind == "SimpleRNN" and cfg.get("activation") == "relu":
        defaults["activation"] = "relu"
    wrong = {k: cfg.get(k) for k, v in defaults.items() if cfg.get(k, v) != v}
    if wrong:
        call.fail(f"{wrong} is not supported (torch's {_MODULES[kind]} computes Keras's defaults {defaults})")


def _rnn_kwargs(kind: str, cfg: dict, **extra) -> dict:
    kwargs = dict(batch_first=True, **extra)
    if kind == "SimpleRNN" and cfg.get("activation") == "relu":
        kwargs["nonlinearity"] = "relu"
    return kwargs


def _cell_to_torch(kind: str, arrays: dict, key, suffix: str = "") -> dict:
    """Keras kernel / recurrent_kernel / bias of one direction -> torch's weight_ih_l0{suffix}, ..."""
    kernel, recurrent = arrays["kernel"], arrays["recurrent_kernel"]
    if kind == "GRU":
        kernel, recurrent = _gate_blocks(kernel, 1, _GRU_TO_TORCH), _gate_blocks(recurrent, 1, _GRU_TO_TORCH)
        b_ih, b_hh = (_gate_blocks(b, 0, _GRU_TO_TORCH) for b in arrays["bias"])
    else:  # LSTM gates i, f, c, o on both sides; one Keras bias = torch b_ih + b_hh
        b_ih, b_hh = arrays["bias"], np.zeros_like(arrays["bias"])
    return {key(f"weight_ih_l0{suffix}"): kernel.T, key(f"weight_hh_l0{suffix}"): recurrent.T,
            key(f"bias_ih_l0{suffix}"): b_ih, key(f"bias_hh_l0{suffix}"): b_hh}


def _cell_to_keras(kind: str, state: dict, key, suffix: str = "") -> dict:
    kernel, recurrent = state[key(f"weight_ih_l0{suffix}")].T, state[key(f"weight_hh_l0{suffix}")].T
    b_ih, b_hh = state[key(f"bias_ih_l0{suffix}")], state[key(f"bias_hh_l0{suffix}")]
    if kind != "GRU":
        return {"kernel": kernel, "recurrent_kernel": recurrent, "bias": b_ih + b_hh}
    return {"kernel": _gate_blocks(kernel, 1, _GRU_TO_TORCH), "recurrent_kernel": _gate_blocks(recurrent, 1,
                                                                                              _GRU_TO_TORCH),
            "bias": np.stack([_gate_blocks(b, 0, _GRU_TO_TORCH) for b in (b_ih, b_hh)])}


def _mask(call):
    """INPUT(k) of the mask Keras passes this call (``mask=`` of its arguments), or None."""
    mask = call.arguments.get("kwargs", {}).get("mask")
    if mask is None:
        return None
    if not (isinstance(mask, dict) and set(mask) == {"input"}):
        call.fail(f"mask {mask!r} is not one tensor")
    shape, steps = call.in_shapes[mask["input"]], call.in_shapes[0][:2]
    if len(shape) != 2 or any(a is not None and b is not None and a != b for a, b in zip(shape, steps)):
        call.fail(f"mask of shape {shape} for a sequence of shape {call.in_shapes[0]}: expected (batch, steps)")
    return INPUT(mask["input"])


def _run(out, call, attr: str, go_backwards: bool, zero_output: bool) -> None:
    """The module on the sequence: directly, or, under a mask, stepped by masked_rnn (same module, same weights)."""
    mask = _mask(call)
    if mask is not None:
        out.function("masked_rnn", SUBMODULE(attr), X, mask, go_backwards=go_backwards, zero_output=zero_output)
        return
    if go_backwards:
        out.method("flip", X, 1)
    out.call_module(attr)


def _final_state(out, kind: str, which: int) -> None:
    """Result ``which`` of torch's (outputs, h_n) / (outputs, (h_n, c_n)) as Keras's state: (N, units)."""
    out.function("operator.getitem", X, 1)
    if kind == "LSTM":
        out.function("operator.getitem", X, which)
    out.method("select", X, 0, 0)


@register("LSTM", "GRU", "SimpleRNN")
class RecurrentRule(Rule):
    def takes_mask(self, call):
        return True

    def emit(self, call, out):
        need_rank(call, 3)
        cfg, kind = call.config, call.kind
        _check_cell(call, cfg, kind)
        attr = out.add_module(_MODULES[kind], int(call.in_shapes[0][-1]), int(cfg["units"]), **_rnn_kwargs(kind, cfg))
        _run(out, call, attr, bool(cfg.get("go_backwards")), bool(cfg.get("zero_output_for_mask")))
        if not cfg.get("return_state"):
            out.function("operator.getitem", X, 0)
            if not cfg["return_sequences"]:
                out.method("select", X, 1, -1)
            return
        out.next_output()  # Keras's results: outputs, then h (and c for an LSTM)
        out.function("operator.getitem", X, 0)
        if not cfg["return_sequences"]:
            out.method("select", X, 1, -1)
        for which in range(2 if kind == "LSTM" else 1):
            out.next_output()
            _final_state(out, kind, which)

    def to_torch(self, call, arrays):
        return _cell_to_torch(call.kind, arrays, call.key)

    def to_keras(self, call, state):
        return _cell_to_keras(call.kind, state, call.key)


@register("Bidirectional")
class BidirectionalRule(Rule):
    """Both directions in one torch RNN (``bidirectional=True``): merge_mode 'concat' as is, 'sum'/'ave' over
    the two halves of each step's features, None as two results."""

    def takes_mask(self, call):
        return True

    def _inner(self, call):
        forward, backward = call.layer.forward_layer, call.layer.backward_layer
        kind = type(forward).__name__
        if kind not in _MODULES or type(backward).__name__ != kind:
            call.fail(f"wraps {kind}/{type(backward).__name__}; supported: the same LSTM, GRU or SimpleRNN both ways")
        return kind, forward, backward

    def emit(self, call, out):
        need_rank(call, 3)
        kind, forward, backward = self._inner(call)
        cfg, back = forward.get_config(), backward.get_config()
        _check_cell(call, cfg, kind)
        if any(cfg.get(k) != back.get(k) for k in ("units", "activation", "return_sequences", "use_bias")) or \
                cfg.get("go_backwards") or not back.get("go_backwards"):
            call.fail("forward and backward layers differ; only a Bidirectional of one layer is supported")
        if cfg.get("return_state"):
            call.fail("return_state=True inside Bidirectional is not supported")
        merge, units = call.config.get("merge_mode"), int(cfg["units"])
        if merge not in ("concat", "sum", "ave", None):
            call.fail(f"merge_mode {merge!r} is not supported (concat, sum, ave, None)")
        attr = out.add_module(_MODULES[kind], int(call.in_shapes[0][-1]), units,
                              **_rnn_kwargs(kind, cfg, bidirectional=True))
        _run(out, call, attr, False, bool(cfg.get("zero_output_for_mask")))
        if cfg["return_sequences"]:
            out.function("operator.getitem", X, 0)  # (N, steps, 2 * units): [forward, backward]
        else:  # the final states h_n (2, N, units) side by side
            out.function("operator.getitem", X, 1)
            if kind == "LSTM":
                out.function("operator.getitem", X, 0)
            out.method("transpose", X, 0, 1)
            out.method("flatten", X, 1)
        if merge in ("sum", "ave"):
            out.method("unflatten", X, -1, [2, units])
            out.method("sum" if merge == "sum" else "mean", X, -2)
        elif merge is None:
            for half in range(2):
                out.next_output()
                out.method("narrow", X, -1, half * units, units)

    def _split(self, call, arrays):
        forward, backward = self._inner(call)[1:]
        return ({k.rsplit("/", 1)[-1]: v for k, v in arrays.items() if k.startswith(f"{forward.name}/")},
                {k.rsplit("/", 1)[-1]: v for k, v in arrays.items() if k.startswith(f"{backward.name}/")})

    def to_torch(self, call, arrays):
        kind = self._inner(call)[0]
        forward, backward = self._split(call, arrays)
        return _cell_to_torch(kind, forward, call.key) | _cell_to_torch(kind, backward, call.key, "_reverse")

    def to_keras(self, call, state):
        kind, forward, backward = self._inner(call)
        prefix, ours = f"{call.layer.path}/", {}
        for layer, suffix in ((forward, ""), (backward, "_reverse")):
            paths = {w.path.rsplit("/", 1)[-1]: w.path for w in layer.weights}
            for name, array in _cell_to_keras(kind, state, call.key, suffix).items():
                path = paths[name]
                ours[path[len(prefix):] if path.startswith(prefix) else path] = array
        return ours


@register("TimeDistributed")
class TimeDistributedRule(Rule):
    """The wrapped layer's own rule on (N * steps, ...): steps folded into the batch, then unfolded. A mask passes
    by (Keras hands it only to a wrapped layer whose call takes one, which is refused)."""

    def takes_mask(self, call):
        return not getattr(call.layer.layer, "_call_has_mask_arg", True)

    def _inner_call(self, call) -> LayerCall:
        inner = call.layer.layer
        from . import RULES

        if type(inner).__name__ not in RULES or type(inner).__name__ in ("TimeDistributed", "Bidirectional"):
            call.fail(f"wraps {type(inner).__name__}, which has no rule here (see --supported)")
        if getattr(call, "_inner", None) is None:
            shapes = [[None, *s[2:]] for s in call.in_shapes]
            call._inner = LayerCall(inner, f"{call.path}/{inner.name}", call.name, shapes,
                                    [[None, *s[2:]] for s in call.out_shapes], epsilon=call.epsilon,
                                    attrs=call.attrs)
        return call._inner

    def emit(self, call, out):
        from . import RULES

        inner = self._inner_call(call)
        rank, steps = call.rank, call.in_shapes[0][1]
        if steps is None:
            call.fail("needs a known number of steps (the time axis of the input shape)")
        out.method("flatten", X, 0, 1)  # (N * steps, ...) in Keras's layout (rank >= 5 keeps it)
        to_twin_layout(out, rank - 1)  # a folded image is NCHW for the inner layer
        saved = out.call
        out.call = inner
        try:
            RULES[inner.kind].emit(inner, out)
        finally:
            out.call = saved
        to_keras_layout(out, len(call.out_shapes[0]) - 1)
        out.method("unflatten", X, 0, [-1, int(steps)])

    def to_torch(self, call, arrays):
        from . import RULES

        inner = self._inner_call(call)
        return RULES[inner.kind].to_torch(inner, arrays)

    def to_keras(self, call, state):
        from . import RULES

        inner = self._inner_call(call)
        return RULES[inner.kind].to_keras(inner, state)


@register("RepeatVector")
class RepeatVectorRule(Rule):
    def emit(self, call, out):
        need_rank(call, 2)
        out.method("unsqueeze", X, 1)
        out.method("repeat_interleave", X, int(call.config["n"]), 1)
