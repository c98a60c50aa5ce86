"""The functional graph behind a Keras model, and the layout between Keras's arrays and the twin's tensors
(``LAYOUT_RULE``: rank-4 NHWC in Keras is NCHW in the twin; every other rank is kept)."""

from __future__ import annotations

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from .parity import ParityError  # noqa: E402

__all__ = ["functional_graph", "to_twin_input", "from_twin_output"]


def functional_graph(model):
    """The Functional graph behind a model (a built Sequential has one), else ParityError."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes_by_depth") or not getattr(graph, "inputs", None):
        raise ParityError(f"Keras model {model.name!r} ({type(model).__name__}) is not built or not functional: "
                          "give it an Input (keras.Input(shape)) first; subclassed models are not supported")
    return graph


def to_twin_input(x: np.ndarray) -> torch.Tensor:
    """A Keras-layout batch as the twin takes it (rank-4 NHWC -> NCHW)."""
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))


def from_twin_output(t: torch.Tensor) -> np.ndarray:
    """A twin's tensor in Keras's layout (rank-4 NCHW -> NHWC), as numpy."""
    a = t.detach().cpu().numpy()
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)
