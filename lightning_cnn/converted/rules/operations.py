"""Raw ``keras.ops`` calls in a functional graph (``x + 3.0``, ``ops.mean(x, axis=1)``, ``x[:, 1:]``): torch ops.

Keyed by the public name (``keras.ops.add``; ``call.arguments`` holds the call's arguments with the k-th input
tensor as ``{"input": k}``, and the operation's settings; see ``keras_ref.operations``). Layout: rank-4 tensors
are NCHW here, so an axis names the twin's dimension (``twin_dim``), a lower-rank operand broadcast against a
rank-4 one is first given Keras's rank-4 shape (leading 1s) and moved to NCHW, a reduction that leaves the
dimensions in another order than Keras's permutes them back, and operations whose meaning depends on element
order (``reshape``, ``transpose``, ``squeeze``, ``expand_dims``, most indexing) run in Keras's layout (NHWC and
back), as the Reshape/Permute layers do. ``einsum`` on images rewrites its subscripts for NCHW instead.
"""

from __future__ import annotations

from . import INPUT, INPUTS, X, Rule, register, to_keras_layout, to_twin_layout, twin_dim
from .activations import emit_activation

_BINARY = {  # keras.ops name -> torch function (operator.* print as infix operators in model.py)
    "add": "operator.add", "subtract": "operator.sub", "multiply": "operator.mul", "divide": "operator.truediv",
    "true_divide": "operator.truediv", "power": "operator.pow", "maximum": "torch.maximum",
    "minimum": "torch.minimum", "greater": "torch.gt", "greater_equal": "torch.ge", "less": "torch.lt",
    "less_equal": "torch.le", "equal": "torch.eq", "not_equal": "torch.ne", "floor_divide": "torch.floor_divide",
    "mod": "torch.remainder", "logical_and": "torch.logical_and", "logical_or": "torch.logical_or",
}
_UNARY = {
    "negative": "operator.neg", "absolute": "torch.abs", "sqrt": "torch.sqrt",  # (ops.abs: an Absolute operation)
    "rsqrt": "torch.rsqrt", "exp": "torch.exp", "log": "torch.log", "square": "torch.square",
    "sign": "torch.sign", "floor": "torch.floor", "ceil": "torch.ceil", "round": "torch.round", "erf": "torch.erf",
    "reciprocal": "torch.reciprocal", "logical_not": "torch.logical_not", "tanh": "torch.tanh",
}
# keras.ops activations without settings -> the Activation layer's name for them
# (ops.swish / ops.hard_swish record Silu / HardSilu operations)
_ACTIVATION_OPS = {"relu": "relu", "relu6": "relu6", "sigmoid": "sigmoid", "silu": "silu", "selu": "selu",
                   "softplus": "softplus", "softsign": "softsign", "hard_sigmoid": "hard_sigmoid",
                   "hard_silu": "hard_silu"}
_REDUCTIONS = {"mean": "torch.mean", "sum": "torch.sum", "max": "torch.amax", "min": "torch.amin",
               "any": "torch.any"}  # (any: Masking's mask)
_CASTS = {"float32": "float", "int32": "long", "int64": "long", "bool": "bool"}


def _ops(*names):
    return [f"keras.ops.{n}" for n in names]


def _name(call) -> str:
    return call.kind.rsplit(".", 1)[-1]


def _operands(call) -> list:
    """The call's positional operands as step arguments: INPUT(k) for tensors, numbers as they are."""
    args = call.arguments["args"]
    kwargs = call.arguments["kwargs"]
    if kwargs:
        call.fail(f"keyword arguments {sorted(kwargs)} are not supported; pass them positionally")
    out = []
    for a in args:
        if isinstance(a, dict) and "input" in a:
            out.append(INPUT(a["input"]))
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            out.append(a)
        else:
            call.fail(f"argument {a!r} is not supported (tensors and Python numbers are; for a constant array "
                      "use a Rescaling layer)")
    return out


def _rank(call, operand) -> int:
    return len(call.in_shapes[operand["$"]]) if isinstance(operand, dict) else 0


@register(*_ops(*_BINARY), "keras.ops.where")
class ElementwiseRule(Rule):
    """Broadcasting arithmetic and comparisons; a lower-rank tensor against a rank-4 image is given Keras's
    rank-4 shape (leading 1s) and moved to NCHW first, so broadcasting pairs the same elements as in Keras."""

    def emit(self, call, out):
        name = _name(call)
        operands = _operands(call)
        if len(operands) != (3 if name == "where" else 2):
            call.fail(f"expects {3 if name == 'where' else 2} operands, got {len(operands)}")
        ranks = [_rank(call, o) for o in operands]
        top = max(ranks)
        if top != 4 and 4 in ranks:
            call.fail(f"broadcasting an image (rank 4) against a rank-{top} tensor is not supported")
        if top == 4:
            lower = [i for i, r in enumerate(ranks) if 0 < r < 4]
            if len(lower) > 1:
                call.fail(f"several lower-rank tensors {[call.in_shapes[operands[i]['$']] for i in lower]} "
                          "broadcast against an image; give them rank 4 first")
            if lower:
                i = lower[0]
                out.method("reshape", operands[i], *[1] * (4 - ranks[i]), *[
                    -1 if d is None else int(d) for d in call.in_shapes[operands[i]["$"]]])
                out.method("permute", X, 0, 3, 1, 2)
                operands[i] = X
        if name in ("maximum", "minimum") and any(not isinstance(o, dict) for o in operands):
            tensor = next(o for o in operands if isinstance(o, dict))
            number = next(float(o) for o in operands if not isinstance(o, dict))
            out.function("torch.clamp", tensor, **({"min": number} if name == "maximum" else {"max": number}))
            return
        out.function("torch.where" if name == "where" else _BINARY[name], *operands)


@register(*_ops(*_UNARY), *_ops(*_ACTIVATION_OPS), *_ops("clip", "cast", "leaky_relu", "elu", "gelu"),
          "keras.activations.relu")
class UnaryRule(Rule):
    """Elementwise functions: the layout does not matter."""

    def emit(self, call, out):
        name, cfg = _name(call), call.config
        if call.kind == "keras.activations.relu":  # Keras's ReLU options (keras.ops.relu has none)
            slope, threshold, top = float(cfg.get("negative_slope", 0.0)), float(cfg.get("threshold", 0.0)), \
                cfg.get("max_value")
            if slope == 0 and threshold == 0:
                out.function("torch.relu", X) if top is None else out.function("torch.clamp", X, 0.0, float(top))
            else:
                out.call_module(out.add_module("KerasReLU", negative_slope=slope, threshold=threshold,
                                               max_value=None if top is None else float(top)))
        elif name in _UNARY:
            out.function(_UNARY[name], X)
        elif name in _ACTIVATION_OPS:
            emit_activation(out, _ACTIVATION_OPS[name], 1)
        elif name == "clip":
            out.function("torch.clamp", X, float(cfg["x_min"]), float(cfg["x_max"]))
        elif name == "cast":
            dtype = str(cfg["dtype"])
            if dtype not in _CASTS:
                call.fail(f"cast to {dtype} is not supported (supported: {', '.join(_CASTS)})")
            out.method(_CASTS[dtype], X)
        elif name == "leaky_relu":
            out.function("F.leaky_relu", X, float(cfg.get("negative_slope", 0.2)))
        elif name == "elu":
            out.function("F.elu", X, float(cfg.get("alpha", 1.0)))
        elif name == "gelu":
            out.function("F.gelu", X, **({"approximate": "tanh"} if cfg.get("approximate", True) else {}))
        else:
            call.fail("has no torch counterpart in this family")


def _axes(call, axis, rank) -> list:
    if axis is None:
        return list(range(rank))
    return sorted({int(a) % rank for a in (axis if isinstance(axis, list) else [axis])})


@register(*_ops("softmax", "log_softmax"))
class SoftmaxRule(Rule):
    def emit(self, call, out):
        axes = _axes(call, call.config.get("axis", -1), call.rank)
        if len(axes) != 1:
            call.fail(f"softmax over several axes {axes} is not supported")
        emit_activation(out, _name(call), twin_dim(axes[0], call.rank))


@register(*_ops(*_REDUCTIONS))
class ReductionRule(Rule):
    """mean/sum/max/min/any over Keras axes; an image reduced to a lower rank may need its dimensions reordered."""

    def emit(self, call, out):
        cfg, rank = call.config, call.rank
        if cfg.get("initial") is not None:
            call.fail("initial= is not supported")
        axes = _axes(call, cfg.get("axis"), rank)
        keepdims = bool(cfg.get("keepdims", False))
        if len(axes) == rank and not keepdims:
            out.function(_REDUCTIONS[_name(call)], X)
            return
        dims = sorted(twin_dim(a, rank) for a in axes)
        out.function(_REDUCTIONS[_name(call)], X, dims, keepdims)
        if rank == 4 and not keepdims:
            kept = [a for a in range(rank) if a not in axes]  # Keras's order of what is left
            twin_order = sorted(kept, key=lambda a: twin_dim(a, rank))
            if twin_order != kept:
                out.method("permute", X, *[twin_order.index(a) for a in kept])


@register("keras.ops.concatenate", "keras.ops.stack")
class JoinRule(Rule):
    def emit(self, call, out):
        tensors = call.arguments["args"][0] if call.arguments["args"] else None
        if tensors != [{"input": k} for k in range(len(call.in_shapes))]:
            call.fail("joins something other than its input tensors in order; pass a list of tensors")
        rank, axis = call.rank, int(call.config.get("axis", 0))
        if _name(call) == "concatenate":
            out.function("torch.cat", INPUTS, twin_dim(axis, rank))
        elif rank == 4:
            call.fail("stacking images (rank 4) into a rank-5 tensor is not supported")
        else:
            out.function("torch.stack", INPUTS, axis % (rank + 1))
            to_twin_layout(out, rank + 1)


@register("keras.ops.split")
class SplitRule(Rule):
    """np.split semantics (a number of equal parts, or indices) = torch.tensor_split; one result per part."""

    def emit(self, call, out):
        cfg = call.config
        parts = cfg["indices_or_sections"]
        out.method("tensor_split", X, [int(p) for p in parts] if isinstance(parts, list) else int(parts),
                   twin_dim(int(cfg.get("axis", 0)), call.rank))
        for i in range(len(call.out_shapes)):
            out.next_output()
            out.function("operator.getitem", X, i)


@register("keras.ops.reshape")
class ReshapeRule(Rule):
    def emit(self, call, out):
        shape = [-1 if d is None else int(d) for d in call.config["newshape"]]
        to_keras_layout(out, call.rank)
        out.method("reshape", X, *shape)
        to_twin_layout(out, len(shape))


@register("keras.ops.transpose")
class TransposeRule(Rule):
    def emit(self, call, out):
        rank = call.rank
        axes = call.config.get("axes")
        axes = list(range(rank))[::-1] if axes is None else [int(a) % rank for a in axes]
        to_keras = (0, 2, 3, 1) if rank == 4 else tuple(range(rank))
        to_twin = (0, 3, 1, 2) if rank == 4 else tuple(range(rank))
        out.method("permute", X, *[to_keras[axes[to_twin[j]]] for j in range(rank)])


@register("keras.ops.squeeze", "keras.ops.expand_dims")
class SqueezeRule(Rule):
    def emit(self, call, out):
        rank, axis = call.rank, call.config.get("axis")
        to_keras_layout(out, rank)
        if _name(call) == "squeeze":
            axes = [a for a, d in enumerate(call.in_shapes[0]) if d == 1] if axis is None else _axes(call, axis, rank)
            if 0 in axes:
                call.fail("squeezing the batch axis is not supported")
            out.method("squeeze", X, axes)
        else:
            axes = axis if isinstance(axis, list) else [axis]
            new_rank = rank + len(axes)
            for a in sorted(int(a) % new_rank for a in axes):
                out.method("unsqueeze", X, a)
        to_twin_layout(out, len(call.out_shapes[0]))


@register("keras.ops.get_item")
class GetItemRule(Rule):
    """Indexing with integers, slices of step 1, ``None`` and ``...``: narrow/select/unsqueeze in Keras's layout
    (an image sliced to an image is sliced in NCHW directly)."""

    def emit(self, call, out):
        args = call.arguments["args"]
        index = args[1] if len(args) == 2 else None
        index = index if isinstance(index, list) else [index]
        shape, rank = call.in_shapes[0], call.rank
        if sum(1 for i in index if i == {"ellipsis": True}) > 1:
            call.fail("more than one ... in an index")
        if {"ellipsis": True} in index:
            at = index.index({"ellipsis": True})
            fill = rank - sum(1 for i in index if i is not None and i != {"ellipsis": True})
            index = index[:at] + [{"slice": [None, None, None]}] * fill + index[at + 1:]
        index += [{"slice": [None, None, None]}] * (rank - sum(1 for i in index if i is not None))
        actions, dim, source = [], 0, 0  # (kind, Keras dimension in the current tensor, arguments)
        for entry in index:
            if entry is None:
                actions.append(("unsqueeze", dim, ()))
                dim += 1
            elif isinstance(entry, int) and not isinstance(entry, bool):
                actions.append(("select", dim, (entry,)))
                source += 1
            elif isinstance(entry, dict) and "slice" in entry:
                start, stop, step = entry["slice"]
                if step not in (None, 1) or any(isinstance(v, dict) for v in (start, stop)):
                    call.fail(f"slice step {step!r} or tensor bounds are not supported (steps of 1 only)")
                size = shape[source]
                source += 1
                if (start, stop) != (None, None):
                    if size is None:
                        call.fail("slicing an axis of unknown size is not supported")
                    begin, end, _ = slice(start, stop).indices(size)
                    actions.append(("narrow", dim, (begin, max(end - begin, 0))))
                dim += 1
            else:
                call.fail(f"index {entry!r} is not supported (integers, slices, None, ...)")
        if rank == 4 and all(kind == "narrow" for kind, _, _ in actions):  # an image sliced to an image: NCHW
            for _, d, extra in actions:
                out.method("narrow", X, twin_dim(d, 4), *extra)
            return
        to_keras_layout(out, rank)
        for kind, d, extra in actions:
            out.method(kind, X, d, *extra)
        to_twin_layout(out, len(call.out_shapes[0]))


@register("keras.ops.matmul")
class MatmulRule(Rule):
    def emit(self, call, out):
        if any(len(s) == 4 for s in call.in_shapes):
            call.fail("matmul of rank-4 (image) tensors is not supported; reshape them to rank 3 first")
        out.function("torch.matmul", *_operands(call))


@register("keras.ops.einsum")
class EinsumRule(Rule):
    """The subscripts of a rank-4 operand (and of a rank-4 result) are reordered to NCHW: no permutes."""

    def emit(self, call, out):
        subscripts = str(call.config["subscripts"]).replace(" ", "")
        if "." in subscripts or "->" not in subscripts:
            call.fail("einsum needs explicit output subscripts and no '...'")
        lhs, rhs = subscripts.split("->")
        terms = lhs.split(",")
        twin = lambda term: term[0] + term[3] + term[1:3] if len(term) == 4 else term  # noqa: E731
        equation = ",".join(twin(t) for t in terms) + "->" + twin(rhs)
        out.function("torch.einsum", equation, *_operands(call))
