"""What a converted model may be made of: the allow-lists graph.json (format version 2) and model.py draw from.

A converted model is stock ``torch.nn`` modules (plus the few helpers of ``lightning_cnn.nets.layers``) named after the
Keras layers, and per Keras call a short chain of *steps*, each one of:

- ``{"module": attribute, "args": [...]}``: call that submodule;
- ``{"function": name, "args": [...], "kwargs": {...}}``: a function of ``FUNCTIONS`` (``torch.relu``, ``F.pad``,
  ``operator.add`` (written ``a + b``), ...);
- ``{"method": name, "args": [self, ...], "kwargs": {...}}``: a tensor method of ``METHODS`` (``permute``, ...).

Arguments are JSON values, or references: ``X`` (the value the chain has so far: the call's first input at the
first step), ``INPUT(i)`` (the call's i-th input), ``INPUTS`` (all inputs, as a list), ``SUBMODULE(name)`` (a
module of the model itself, for a helper function that runs its weights: ``masked_rnn(self.lstm, x, mask)``). Module descriptions are
``{"class": a key of MODULES, "args": [...], "kwargs": {...}}``. The same description builds the twin's module and
prints its constructor in model.py, so nothing read from a file is ever evaluated: every name is looked up here.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..nets import layers

X = {"$": "x"}
INPUTS = {"$": "inputs"}


def INPUT(i: int) -> dict:  # noqa: N802  (reads as the constant-like references above)
    return {"$": int(i)}


def SUBMODULE(name: str) -> dict:  # noqa: N802
    return {"$module": str(name)}


# Stock modules by the name model.py writes; then the helpers (written into model.py from their source).
MODULES = {f"nn.{name}": getattr(nn, name) for name in (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear", "Bilinear",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "RMSNorm",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "ZeroPad1d", "ZeroPad2d",
    "ZeroPad3d", "Upsample", "Flatten", "Unflatten", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "AlphaDropout", "Embedding", "LSTM", "GRU", "RNN", "MultiheadAttention", "PReLU", "ReLU", "Softmax")}
HELPERS = {name: getattr(layers, name) for name in (
    "SamePad", "SamePool", "KerasReLU", "ElementwisePReLU", "Rescale", "Normalize", "GaussianNoise",
    "GaussianDropout", "NoiseShapeDropout", "LayerScale", "RandomFlip", "RandomAffine", "RandomContrast",
    "RandomBrightness")}
MODULES.update(HELPERS)

# Functions by the name model.py writes (``F`` is torch.nn.functional); operator.* print as infix operators.
FUNCTIONS = {
    **{f"torch.{name}": getattr(torch, name) for name in (
        "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "square", "softmax", "log_softmax", "cat",
        "stack", "maximum", "minimum", "clamp", "where", "matmul", "mean", "sum", "amax", "amin", "flatten",
        "gt", "ge", "lt", "le", "eq", "ne", "floor_divide", "remainder", "logical_and", "logical_or", "logical_not",
        "sign", "floor", "ceil", "round", "erf", "reciprocal", "einsum", "any")},
    **{f"F.{name}": getattr(F, name) for name in (
        "pad", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "mish", "hardsigmoid", "hardswish",
        "softplus", "softsign", "interpolate")},
    **{f"operator.{name}": getattr(operator, name) for name in (
        "add", "sub", "mul", "truediv", "pow", "neg", "getitem")},
}
# Helper functions of lightning_cnn.nets.layers (written into model.py from their source when a step calls them).
HELPER_FUNCTIONS = {name: getattr(layers, name) for name in ("masked_rnn",)}
FUNCTIONS.update(HELPER_FUNCTIONS)
INFIX = {"operator.add": "+", "operator.sub": "-", "operator.mul": "*", "operator.truediv": "/",
         "operator.pow": "**"}

METHODS = frozenset((
    "permute", "transpose", "flatten", "unflatten", "reshape", "view", "mean", "sum", "amax", "amin", "select",
    "narrow", "long", "float", "movedim", "squeeze", "unsqueeze", "repeat_interleave", "contiguous", "chunk",
    "split", "tensor_split", "bool", "flip"))


def is_ref(value) -> bool:
    return isinstance(value, dict) and set(value) == {"$"}


def is_submodule(value) -> bool:
    return isinstance(value, dict) and set(value) == {"$module"}
