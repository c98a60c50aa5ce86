"""The documented models in Keras 3 on TensorFlow, written as their authors wrote them, with their recipes.

Importing this package changes nothing and loads no TensorFlow. Its modules that need Keras (``models``,
``training``, ``parity``) load TensorFlow when they are imported, through ``load_tensorflow()``: it sets
``KERAS_BACKEND=tensorflow`` and ``TF_CPP_MIN_LOG_LEVEL=2`` where they are unset and applies the TensorFlow/torch
coexistence guard first (``lightning_cnn/coexist.py``). Code that imports ``keras`` or ``tensorflow`` itself should
call ``keras_ref.load_tensorflow()`` before.
"""

from __future__ import annotations

import importlib

from ._tf import load_tensorflow

# Public name -> the module that defines it (imported on first use: that import loads TensorFlow).
_EXPORTS = {"build_model": "keras_ref.models", "ParityError": "keras_ref.parity",
            "list_models": "lightning_cnn.specs", "get_spec": "lightning_cnn.specs",
            "UnknownModelError": "lightning_cnn.specs"}
__all__ = [*_EXPORTS, "load_tensorflow"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
