"""Raw ``keras.ops`` calls in a functional graph (``x + 3.0``, ``ops.mean(x, axis=1)``, ``x[:, 1:]``), as data.

Keras 3 records such a call as a node whose ``operation`` is a ``keras.src.ops.operation.Operation`` that is not a
``Layer`` (``keras.src.ops.numpy.Add``, ``...nn.Softmax``, ``...activations.ReLU``): its own settings (``axis``,
``keepdims``, ``newshape``, ``x_min``...) are in ``operation.get_config()``, and the call's positional and keyword
arguments, tensors and Python constants mixed (``(tensor, 3.0)``, ``(2.0, tensor)``, ``([t1, t2],)``, slice
tuples), are in ``node.arguments.args`` / ``.kwargs``; ``node.input_tensors`` lists the tensors in the order they
appear there (a tensor passed twice, as in ``x * x``, is listed twice), ``node.output_tensors`` has one entry per
result (``ops.split`` has several). A ``.keras`` file stores the same: the class under its module, the config, and
the arguments with tensors as ``__keras_tensor__`` references.

``describe(node)`` turns one such node into plain JSON data: the public name (``keras.ops.add``), the settings,
and the arguments as a template in which the k-th tensor is ``{"input": k}``, a slice is
``{"slice": [start, stop, step]}``, ``...`` is ``{"ellipsis": true}`` and a constant array is
``{"array": nested lists, "dtype": ...}``. What a converter rule does with it is up to the rule.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

__all__ = ["OperationCall", "call_arguments", "describe", "is_operation", "operation_kind"]


@dataclass
class OperationCall:
    """One raw keras.ops call: ``kind`` (``keras.ops.mean``), ``config`` (its settings, no name), the argument
    templates."""

    kind: str
    config: dict
    args: list
    kwargs: dict


def is_operation(op) -> bool:
    """A raw keras.ops operation (not a Layer, not a Model)."""
    import keras
    from keras.src.ops.operation import Operation

    return isinstance(op, Operation) and not isinstance(op, keras.layers.Layer)


def operation_kind(op) -> str:
    """The public name of the function that made ``op``: ``keras.ops.get_item`` for ``GetItem``,
    ``keras.activations.relu`` for ``activations.ReLU``; ``keras.ops.<Class>`` when no function matches."""
    cls = type(op)
    namespace = "keras.activations" if ".activations" in cls.__module__ else "keras.ops"
    key = cls.__name__.lower()
    module = vars(sys.modules[cls.__module__])
    for name, value in module.items():
        if not name.startswith("_") and callable(value) and not isinstance(value, type) and \
                name.replace("_", "") == key:
            return f"{namespace}.{name}"
    return f"{namespace}.{cls.__name__}"


class _Unsupported(ValueError):
    pass


def _template(value, tensors: list, position: list):
    """JSON form of one argument; KerasTensors become ``{"input": k}`` in their order of appearance."""
    import keras

    if isinstance(value, keras.KerasTensor):
        k = position[0]
        if k >= len(tensors) or tensors[k] is not value:
            raise _Unsupported("its tensor arguments do not line up with the node's inputs")
        position[0] += 1
        return {"input": k}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, slice):
        return {"slice": [_template(v, tensors, position) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, (list, tuple)):
        return [_template(v, tensors, position) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _template(v, tensors, position) for k, v in value.items()}}
    if isinstance(value, np.ndarray) or hasattr(value, "numpy"):
        array = np.asarray(keras.ops.convert_to_numpy(value))
        return {"array": array.tolist(), "dtype": str(array.dtype)}
    raise _Unsupported(f"an argument of type {type(value).__name__} cannot be stored as data")


def _plain(value):
    """A setting from ``get_config`` as JSON (tuples as lists, numpy scalars as numbers)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _arguments(node) -> dict:
    """``{"args", "kwargs"}`` templates of one call; _Unsupported if an argument cannot be stored as data."""
    tensors, position = list(node.input_tensors), [0]
    out = dict(args=[_template(a, tensors, position) for a in node.arguments.args],
               kwargs={k: _template(v, tensors, position) for k, v in node.arguments.kwargs.items()})
    if position[0] != len(tensors):
        raise _Unsupported("its tensor arguments do not line up with the node's inputs")
    return out


def call_arguments(node) -> dict:
    """A layer call's arguments as templates (``{"args", "kwargs"}``); empty if one cannot be stored as data
    (the rules that read arguments then refuse the call themselves)."""
    try:
        return _arguments(node)
    except _Unsupported:
        return {}


def describe(node) -> OperationCall:
    """``node``'s raw keras.ops call as data; ValueError (one line, the caller adds the place) if an argument
    cannot be stored."""
    op = node.operation
    config = {k: _plain(v) for k, v in op.get_config().items() if k != "name"}
    try:
        arguments = _arguments(node)
    except _Unsupported as error:
        raise ValueError(str(error)) from None
    return OperationCall(operation_kind(op), config, arguments["args"], arguments["kwargs"])
