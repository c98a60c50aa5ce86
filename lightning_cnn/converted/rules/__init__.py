"""One conversion rule per Keras layer family, one file each, registered by decorator (TF-free).

Adding a layer is one file here (or a class in the family's file) and one test. A rule is a class decorated with
``@register("KerasClass", ...)`` and has three methods, all on a ``LayerCall`` (one call of the Keras layer, its
shapes in Keras layout with batch ``None``, ``call.config`` = ``layer.get_config()``):

- ``emit(call, out)``: check the config (``call.fail(why)`` refuses what the rule cannot reproduce: one line
  naming layer, class, place and what to do), then describe the stock modules (``out.add_module("nn.Conv2d",
  3, 8, kernel_size=(3, 3), role=None)``: named after the Keras layer, ``role`` appends ``_role``; returns the
  attribute name) and the call's chain of steps (``out.call_module(attribute)``, ``out.function("torch.relu", X)``,
  ``out.method("permute", X, 0, 2, 3, 1)``; references ``X``/``INPUT(i)``/``INPUTS`` from ``..vocabulary``).
  Names must be in the allow-lists of ``lightning_cnn.converted.vocabulary`` (extend them there).
- ``to_torch(call, arrays)``: Keras weights ``{variable name: float32 numpy array}`` -> ``{state_dict key: array}``
  (keys ``call.key("weight", role)``); every state entry the modules have must be returned.
- ``to_keras(call, state)``: the reverse, ``{state key: array}`` -> ``{Keras variable name: array}``.
- ``takes_mask(call)``: True where the rule implements the mask Keras passes the call (``mask=``, an input
  tensor of the call, ``call.arguments["kwargs"]["mask"]``); the walker refuses a masked call of any other rule.

Layout (``LAYOUT_RULE``): rank-4 tensors are NCHW in torch where Keras has NHWC; every other rank keeps Keras's
layout. ``twin_dim`` maps a Keras axis; ``to_twin_array``/``from_twin_array`` move broadcast constants.
The walker over the Keras graph (needs TensorFlow) is ``keras_ref.convert``; it calls ``emit`` once per call
(a shared layer's second call reuses the modules of its first) and the weight maps once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import ConversionError
from ..vocabulary import FUNCTIONS, INPUT, INPUTS, METHODS, MODULES, SUBMODULE, X, is_ref

__all__ = ["Rule", "register", "RULES", "LayerCall", "Emitter", "X", "INPUT", "INPUTS", "SUBMODULE", "twin_dim",
           "pairs",
           "to_twin_array", "from_twin_array", "ConversionError", "symmetric_padding"]

LAYOUT_RULE = ("rank-4 tensors: NHWC in Keras, NCHW in torch; every other rank (vectors, (N, steps, features) "
               "sequences) keeps Keras's layout")


@dataclass
class LayerCall:
    """One call of a Keras layer, as a rule sees it (duck-typed: nothing here needs TensorFlow)."""

    layer: object
    path: str  # where it is: "outer_model/inner_model/layer"
    name: str  # the Python attribute name its (main) module gets
    in_shapes: list
    out_shapes: list
    epsilon: float = 1e-7  # keras.config.epsilon() (Normalization divides by max(std, epsilon))
    flatten_hwc: tuple | None = None  # a Dense fed by a channels-first Flatten of this (H, W, C) tensor
    flatten_chw: bool = False  # this Flatten feeds only Dense layers: flatten channels first, permute their columns
    attrs: dict = field(default_factory=dict)  # role -> attribute name (filled by Emitter.add_module)
    # The call's arguments as data (keras_ref.operations): {"args": [...], "kwargs": {...}}, the k-th input tensor
    # written {"input": k}; for a raw keras.ops call also "kind" (its public name, e.g. "keras.ops.add", which is
    # its RULES key) and "config" (its settings).
    arguments: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.arguments.get("kind") or type(self.layer).__name__

    @property
    def rank(self) -> int:
        return len(self.in_shapes[0])

    @property
    def config(self) -> dict:
        return self.arguments["config"] if "config" in self.arguments else self.layer.get_config()

    @property
    def is_operation(self) -> bool:
        """A raw keras.ops call (``x + 3.0``), not a layer."""
        return "kind" in self.arguments

    def key(self, parameter: str, role: str | None = None) -> str:
        return f"{self.attrs[role]}.{parameter}"

    def fail(self, why: str):
        what = "operation" if self.is_operation else "layer"
        raise ConversionError(f"{what} {self.path!r} ({self.kind}): {why}")


class Emitter:
    """Collects one call's modules (into the shared ``modules`` table) and its chain of steps."""

    def __init__(self, call: LayerCall, modules: dict, taken: set, python_name):
        self.call, self.modules, self.taken, self.python_name = call, modules, taken, python_name
        self.steps: list = []
        self.outputs: list = []  # a call with several results: one chain of steps per result (see next_output)

    def next_output(self) -> None:
        """For a call with several results (``ops.split``, ``LSTM(return_state=True)``): the steps after this
        compute the next result from the call's value (``X`` starts as the value the main chain computed)."""
        self.outputs.append([])

    def _append(self, step: dict) -> None:
        (self.outputs[-1] if self.outputs else self.steps).append(step)

    def add_module(self, cls: str, *args, role: str | None = None, frozen=(), **kwargs) -> str:
        """Describe a module (``cls`` from MODULES); ``frozen``: parameters Keras does not have (held fixed)."""
        if cls not in MODULES:
            raise KeyError(f"{cls!r} is not in vocabulary.MODULES")
        spec = dict(cls=cls, args=_jsonable(list(args)), kwargs=_jsonable(kwargs), frozen=list(frozen))
        if role in self.call.attrs:  # the layer's second call: its module exists; it must be the same one
            attr = self.call.attrs[role]
            if self.modules[attr]["module"] != spec:
                self.call.fail("is called on inputs of different shapes; a shared layer must see one shape")
            return attr
        attr = self.call.name if role is None else self.python_name(f"{self.call.name}_{role}", self.taken)
        self.call.attrs[role] = attr
        self.modules[attr] = dict(name=attr, module=spec, keras_class=self.call.kind, keras_path=self.call.path)
        return attr

    def call_module(self, attr: str, *args) -> None:
        self._append(dict(module=attr, args=_jsonable(list(args) or [X])))

    def function(self, name: str, *args, **kwargs) -> None:
        if name not in FUNCTIONS:
            raise KeyError(f"{name!r} is not in vocabulary.FUNCTIONS")
        self._append(dict(function=name, args=_jsonable(list(args)), kwargs=_jsonable(kwargs)))

    def method(self, name: str, *args, **kwargs) -> None:
        if name not in METHODS:
            raise KeyError(f"{name!r} is not in vocabulary.METHODS")
        self._append(dict(method=name, args=_jsonable(list(args)), kwargs=_jsonable(kwargs)))


def _jsonable(value):
    """Tuples -> lists, numpy scalars -> Python, so a description is plain JSON (and compares equal to it)."""
    if is_ref(value):
        return dict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Rule:
    """Base of a layer family's rule (see the package docstring); layers without weights keep the defaults."""

    keras_classes: tuple = ()

    def emit(self, call: LayerCall, out: Emitter) -> None:
        raise NotImplementedError

    def to_torch(self, call: LayerCall, arrays: dict) -> dict:
        return {}

    def to_keras(self, call: LayerCall, state: dict) -> dict:
        return {}

    def takes_mask(self, call: LayerCall) -> bool:
        return False


RULES: dict[str, Rule] = {}


def register(*keras_classes: str):
    """Class decorator: the rule converts these Keras layer classes (by class name: no Keras import needed)."""

    def decorate(cls):
        rule = cls()
        for name in keras_classes:
            if name in RULES:
                raise ValueError(f"two rules for Keras {name}: {type(RULES[name]).__name__} and {cls.__name__}")
            RULES[name] = rule
        cls.keras_classes = tuple(keras_classes)
        return cls

    return decorate


# --- helpers the families share ---------------------------------------------------------------------------------


def twin_dim(axis: int, rank: int) -> int:
    """torch's dimension for a Keras axis of a rank-``rank`` tensor (NHWC -> NCHW for rank 4)."""
    axis = axis % rank
    return (0, 2, 3, 1)[axis] if rank == 4 else axis


def pairs(value, n: int) -> list:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def symmetric_padding(pads: list) -> list | None:
    """The per-dimension padding (first dimension first) a torch kernel applies itself, if ``pads`` (F.pad
    order) is the same on both sides of every dimension; else None."""
    if any(pads[i] != pads[i + 1] for i in range(0, len(pads), 2)):
        return None
    return pads[::2][::-1]


def to_twin_array(array, rank: int) -> np.ndarray:
    """A constant broadcast against a Keras tensor of ``rank`` (batch axis dropped) in torch's layout."""
    array = np.asarray(array, dtype=np.float32)
    if rank == 4 and array.ndim >= 1:
        array = array.reshape((1,) * (3 - array.ndim) + array.shape).transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def from_twin_array(array, rank: int) -> np.ndarray:
    array = np.asarray(array)
    return np.ascontiguousarray(array.transpose(1, 2, 0)) if rank == 4 and array.ndim == 3 else array


def channels_last(call: LayerCall) -> None:
    if call.config.get("data_format", "channels_last") not in (None, "channels_last"):
        call.fail(f"data_format={call.config['data_format']!r}: only channels_last models are supported; "
                  "rebuild the model with data_format='channels_last'")


def need_rank(call: LayerCall, *ranks: int) -> None:
    if call.rank not in ranks:
        call.fail(f"expects a rank-{'/'.join(map(str, ranks))} input, got shape {call.in_shapes[0]}")


def one_axis(call: LayerCall, axis) -> int:
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            call.fail(f"normalisation over several axes {axis} is not supported")
        axis = axis[0]
    return int(axis)


def swap_sequence_channels(out: Emitter, rank: int, back: bool = False) -> None:
    """(N, steps, C) <-> torch's (N, C, steps) around a 1-D kernel (its own inverse); a rank-5 volume (N, D, H, W,
    C: Keras's layout, kept by LAYOUT_RULE) to (N, C, D, H, W) around a 3-D one, ``back`` the reverse. Images are
    NCHW already."""
    if rank == 3:
        out.method("transpose", X, 1, 2)
    elif rank == 5:
        out.method("permute", X, *((0, 2, 3, 4, 1) if back else (0, 4, 1, 2, 3)))


def to_keras_layout(out: Emitter, rank: int) -> None:
    if rank == 4:
        out.method("permute", X, 0, 2, 3, 1)


def to_twin_layout(out: Emitter, rank: int) -> None:
    if rank == 4:
        out.method("permute", X, 0, 3, 1, 2)


def with_bias(arrays: dict, key: str, state: dict) -> dict:
    return state | ({key: arrays["bias"]} if "bias" in arrays else {})


from . import (activations, applications, attention, augmentation, conv, dense, embedding,  # noqa: E402
               masking, merging, normalization, operations, pooling, preprocessing, recurrent, regularization,
               reshaping)
