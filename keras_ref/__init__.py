"""The documented models in Keras 3 on TensorFlow, written as their authors wrote them, with their recipes.

Importing this package loads TensorFlow; ``lightning_cnn`` is imported first so that torch and TensorFlow can
share the process (see ``lightning_cnn/coexist.py``).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import lightning_cnn  # noqa: E402,F401  (coexistence guard runs before TensorFlow loads)
from lightning_cnn.specs import UnknownModelError, get_spec, list_models  # noqa: E402

from .models import build_model  # noqa: E402

__all__ = ["build_model", "list_models", "get_spec", "UnknownModelError"]
