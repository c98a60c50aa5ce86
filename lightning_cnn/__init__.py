"""PyTorch Lightning ports of classic Keras CNN tutorials. Never imports TensorFlow."""

from .coexist import make_safe_for_tensorflow

make_safe_for_tensorflow()  # before torch can load triton; see coexist.py

from .models import build_model, count_params  # noqa: E402
from .specs import DEFAULT_MODEL, SPECS, UnknownModelError, get_spec, list_models  # noqa: E402

__all__ = ["build_model", "count_params", "list_models", "get_spec", "SPECS", "DEFAULT_MODEL", "UnknownModelError"]
__version__ = "0.1.0"
