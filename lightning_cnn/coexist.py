"""Let TensorFlow and PyTorch share one process, whichever is imported first.

Seen here: once TensorFlow is loaded, importing ``triton`` (which the first torch optimizer step does, through
``torch._dynamo``) kills the process with SIGSEGV. Loaded before TensorFlow, triton is harmless. So: if TensorFlow
is not loaded yet, load triton now; if it already is, mark triton as absent so that torch never tries (torch then
runs without triton, as on any CPU-only build; ``torch.compile`` still works on CPU through C++ codegen).

Nothing here runs at import: ``keras_ref`` calls the guard right before it loads TensorFlow, and ``make_optimizer``
right before torch's first step could load triton, so either import order is safe through this project's code.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings


def make_safe_for_tensorflow() -> str:
    """Apply the rule above; returns what was done ("preloaded", "disabled", "absent" or "already")."""
    if "triton" in sys.modules:
        return "already"
    if "tensorflow" in sys.modules:
        sys.modules["triton"] = None  # importlib then reports triton as not installed
        warnings.warn("TensorFlow was loaded before triton, which would crash it: triton is disabled for this "
                      "process (torch runs as on a CPU-only build; GPU torch.compile is unavailable). Import "
                      "TensorFlow through keras_ref.load_tensorflow() to keep it.", RuntimeWarning, stacklevel=2)
        return "disabled"
    if importlib.util.find_spec("triton") is None:
        return "absent"
    import triton  # noqa: F401

    return "preloaded"
