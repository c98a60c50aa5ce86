"""PyTorch Lightning ports of classic Keras CNN tutorials. Never imports TensorFlow."""

from .coexist import make_safe_for_tensorflow

make_safe_for_tensorflow()  # before torch can load triton; see coexist.py

from .models import build_model, count_params  # noqa: E402
from .specs import DEFAULT_MODEL, SPECS, UnknownModelError, get_spec, list_models  # noqa: E402

__all__ = ["build_model", "count_params", "list_models", "get_spec", "SPECS", "DEFAULT_MODEL", "UnknownModelError",
           "load_converted"]
__version__ = "0.1.0"


def __getattr__(name):
    """``load_converted`` is imported on first use: ``import lightning_cnn`` stays cheap and side-effect free."""
    if name == "load_converted":
        from .converted import load_converted

        return load_converted
    raise AttributeError(f"module 'lightning_cnn' has no attribute {name!r}")
