"""graph.json <-> a ``torch.fx.GraphModule`` twin, and ``load_converted`` (no TensorFlow, no pickle, no code).

graph.json (format ``lightning-cnn-graph``, version 1) is plain data:
``{"format", "version", "name", "layout", "inputs": [{"name", "shape", "dtype"}],
"modules": [{"name", "op", "config", "keras_class", "keras_path"}],
"nodes": [{"name", "module", "inputs": [value names]}], "outputs": [value names]}``.
A module is one Keras layer (its weights); a node is one call of it (a layer shared by two calls is one module,
two nodes). Every op name must be in ``ops.OPS`` and every config is passed as keyword arguments, so a folder can
only ever describe compositions of the known ops.
"""

from __future__ import annotations

import json
import keyword
import os
import re
from pathlib import Path

import torch
from torch import fx, nn

from ..errors import UserError
from .ops import OPS

FORMAT, VERSION = "lightning-cnn-graph", 1
LAYOUT_RULE = ("rank-4 tensors: NHWC in Keras, NCHW in the twin; every other rank (vectors, (N, steps, features) "
               "sequences) keeps Keras's layout")


class ConvertedModelError(ValueError, UserError):
    """A converted folder that cannot be loaded (missing, corrupt, tampered or mismatched files)."""


def python_name(name: str, taken: set) -> str:
    """A Keras layer name as a unique Python identifier (torch module and fx node names)."""
    out = re.sub(r"\W", "_", name) or "layer"
    if out[0].isdigit() or keyword.iskeyword(out):
        out = f"_{out}"
    base, i = out, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


# Sizes a config sets that no weight in the file vouches for: each drives how much forward() allocates (padding
# from strides/dilations, pad/crop amounts, upsampling factors, pool windows, reshape targets, noise shapes), so a
# tampered graph.json could ask for unbounded memory. 2**16 is far beyond any real image or sequence extent.
MAX_EXTENT = 1 << 16
UNWEIGHTED_SIZES = {
    "conv": ("strides", "dilation"), "separable_conv": ("strides", "dilation"),
    "conv_transpose": ("strides", "dilation"), "pool": ("pool_size", "strides"), "pad2d": ("pads",),
    "upsample2d": ("size",), "reshape": ("target_shape",), "dropout": ("noise_shape",),
}


def _integers(value):
    if isinstance(value, int) and not isinstance(value, bool):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _integers(item)


def _check_extents(where: str, name: str, op: str, config: dict):
    for key in UNWEIGHTED_SIZES.get(op, ()):
        if any(abs(n) > MAX_EXTENT for n in _integers(config.get(key))):
            _fail(where, f"module {name!r} ({op}): {key}={config[key]!r} is beyond the bound {MAX_EXTENT}")


def _identifier(name) -> bool:
    """Names become Python source in the twin's generated forward(): plain identifiers only."""
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _fail(where: str, why: str):
    raise ConvertedModelError(f"{where}: {why}; re-create the folder with python -m keras_ref.convert")


def build_twin(graph: dict, where: str = "graph") -> fx.GraphModule:
    """The twin (randomly initialised) that ``graph`` describes; every field is checked before use."""
    if not isinstance(graph, dict) or graph.get("format") != FORMAT:
        _fail(where, f"not a {FORMAT} file")
    if graph.get("version") != VERSION:
        _fail(where, f"format version {graph.get('version')!r}, this lightning_cnn reads version {VERSION}")
    root = nn.Module()
    try:
        for spec in graph["modules"]:
            name, op = spec["name"], spec["op"]
            if not _identifier(name) or hasattr(root, name):
                _fail(where, f"bad or duplicate module name {name!r}")
            if op not in OPS:
                _fail(where, f"module {name!r}: unknown op {op!r} (known: {', '.join(sorted(OPS))})")
            if not isinstance(spec["config"], dict):
                _fail(where, f"module {name!r} ({op}): config is not an object")
            _check_extents(where, name, op, spec["config"])
            try:
                module = OPS[op](**spec["config"])
            except (TypeError, ValueError, RuntimeError, KeyError, ZeroDivisionError, OverflowError) as error:
                _fail(where, f"module {name!r} ({op}): bad config {spec['config']!r} ({error})")
            module.keras_class, module.keras_path = spec.get("keras_class"), spec.get("keras_path")
            root.add_module(name, module)
        g = fx.Graph()
        values = {}
        for spec in graph["inputs"]:
            if not _identifier(spec["name"]) or spec["name"] in values:
                _fail(where, f"bad or duplicate input name {spec['name']!r}")
            values[spec["name"]] = g.placeholder(spec["name"])
        for node in graph["nodes"]:
            if not hasattr(root, str(node["module"])):
                _fail(where, f"node {node['name']!r} calls unknown module {node['module']!r}")
            missing = [v for v in node["inputs"] if v not in values]
            if missing:
                _fail(where, f"node {node['name']!r} reads {missing} before they are computed")
            values[node["name"]] = g.call_module(node["module"], tuple(values[v] for v in node["inputs"]))
        outs = [values[v] for v in graph["outputs"]]
    except (KeyError, TypeError) as error:
        _fail(where, f"malformed graph ({type(error).__name__}: {error})")
    g.output(outs[0] if len(outs) == 1 else tuple(outs))
    twin = fx.GraphModule(root, g, class_name=python_name(str(graph.get("name", "Twin")), set()))
    twin.keras_name = graph.get("name")
    twin.input_specs = graph["inputs"]
    return twin


def _check_against_header(twin: nn.Module, weights_path: Path):
    """Every parameter and buffer the graph implies must be in the safetensors header with the same shape.

    Read from the header alone (``safe_open`` loads no tensor) and checked on a twin built on the meta device, so a
    graph.json asking for an enormous layer is refused before any memory is allocated for it.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights_path, framework="pt") as file:
            stored = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        _fail(str(weights_path), f"cannot read ({error})")
    expected = {key: tuple(t.shape) for key, t in twin.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        _fail(str(weights_path), f"weights do not match graph.json (missing {missing[:5]}, unexpected "
                                 f"{unexpected[:5]})")
    for key, shape in expected.items():
        if stored[key] != shape:
            module = twin.get_submodule(key.split(".")[0])
            _fail(str(weights_path), f"weight shapes do not match graph.json: layer {key.split('.')[0]!r} "
                                     f"(Keras {module.keras_class} {module.keras_path}) implies {key} of shape "
                                     f"{shape}, the file holds {stored[key]}")


def load_converted(path: str | os.PathLike) -> nn.Module:
    """The twin saved by ``python -m keras_ref.convert`` (graph.json + weights.safetensors), in eval mode.

    Reads only those two files: JSON and safetensors (no pickle, no code from the folder); TensorFlow and Keras
    are not needed. The twin is first built without storage (meta device) and checked against the weights file's
    header: names and shapes must match exactly, else ConvertedModelError, before anything is allocated.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    graph_path, weights_path = folder / "graph.json", folder / "weights.safetensors"
    for file in (graph_path, weights_path):
        if not file.is_file():
            raise ConvertedModelError(f"{file} does not exist: {folder} is not a converted model folder "
                                      "(python -m keras_ref.convert MODEL.keras --out FOLDER writes one)")
    try:
        graph = json.loads(graph_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        _fail(str(graph_path), f"not valid JSON ({error})")
    with torch.device("meta"):
        twin = build_twin(graph, str(graph_path))
    _check_against_header(twin, weights_path)
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as error:
        _fail(str(weights_path), f"cannot read ({error})")
    twin = twin.to_empty(device="cpu")
    twin.load_state_dict(state)
    return twin.eval()
