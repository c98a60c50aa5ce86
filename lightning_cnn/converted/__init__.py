"""Converted Keras models: stock torch modules described as data (``rules``, ``vocabulary``), the TF-free loader
of a folder written by keras_ref.convert (``graph``), its plain PyTorch source (``source``), and inference copies."""

from .graph import (FORMAT, LAYOUT_RULE, VERSION, ConvertedModelError, build_twin, load_converted,
                    set_input_memory_format)
from .inference import fuse_for_inference, prepare_for_inference

__all__ = ["load_converted", "fuse_for_inference", "prepare_for_inference", "build_twin", "ConvertedModelError",
           "set_input_memory_format", "FORMAT", "VERSION", "LAYOUT_RULE"]
