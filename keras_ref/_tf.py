"""Loading TensorFlow (and Keras 3 on it) so that torch can share the process: the one place keras_ref does it."""

from __future__ import annotations

import os

# Keras's backend, and TensorFlow's C++ log level (2: warnings and errors only, not its start-up chatter). Applied
# only where the environment does not say otherwise, and only when TensorFlow is about to load.
ENVIRONMENT_DEFAULTS = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}


def load_tensorflow():
    """Imports TensorFlow's Keras 3 after the coexistence guard (``lightning_cnn.coexist``) and returns ``keras``.

    Called by every keras_ref module that needs Keras, before anything else imports it; a no-op after the first
    call. The guard warns if TensorFlow is already loaded (triton then has to be disabled for the process).
    """
    from lightning_cnn.coexist import make_safe_for_tensorflow

    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    make_safe_for_tensorflow()
    import keras

    return keras
