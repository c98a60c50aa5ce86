"""PyTorch Lightning ports of classic Keras CNN tutorials. Never imports TensorFlow.

Importing the package changes nothing in the process and loads nothing heavy: the names below are imported on
first use. They are the public API; the modules they come from (``nets.models``, ``recipes.module``, ``datamodule``,
``data``, ``specs``, ``speed``, ``nets.layers``, ``converted``, ``errors``) are public too, the rest is the project's
own plumbing. Packages group modules by concern: ``nets`` (the networks and their layers), ``recipes`` (how a
network is trained), ``run`` (the run core), ``converted`` (Keras twins), ``user_data``, ``speed``, ``cli``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "build_model": "nets.models", "count_params": "nets.models",
    "KerasRecipeModule": "recipes.module",
    "ArrayDataModule": "datamodule", "InMemoryLoader": "datamodule",
    "load_dataset": "data", "preprocess": "data",
    "SPECS": "specs", "DEFAULT_MODEL": "specs", "ModelSpec": "specs", "get_spec": "specs", "list_models": "specs",
    "Speed": "speed",
    "RunConfig": "run.training", "fit_and_test": "run.training", "make_trainer": "run.training",
    "UserError": "errors", "DataError": "data", "UnknownModelError": "specs", "CheckpointError": "errors",
    "UsageError": "errors", "OutputError": "errors", "DivergedError": "errors", "Interrupted": "errors",
    "Terminated": "errors",
    "WeightsNotFoundError": "nets.pretrained",
    "load_converted": "converted",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
