"""Converted Keras models: the op registry and the TF-free loader of a folder written by keras_ref.convert."""

from .graph import FORMAT, LAYOUT_RULE, VERSION, ConvertedModelError, build_twin, load_converted
from .inference import fuse_for_inference, prepare_for_inference
from .ops import OPS

__all__ = ["load_converted", "fuse_for_inference", "prepare_for_inference", "build_twin", "ConvertedModelError",
           "OPS", "FORMAT", "VERSION", "LAYOUT_RULE"]
