"""graph.json <-> a ``torch.fx.GraphModule`` twin of stock modules, and ``load_converted`` (no TensorFlow, no
pickle, no code read from the folder).

graph.json (format ``lightning-cnn-graph``, version 2) is plain data: ``{"format", "version", "name",
"class_name", "layout", "inputs": [{"name", "shape", "dtype"}], "modules": [{"name", "module": {"cls", "args",
"kwargs", "frozen"}, "keras_class", "keras_path"}], "nodes": [{"name", "keras_class", "keras_path", "inputs":
[value names], "steps": [...]}], "outputs": [value names], "masked_outputs": [the outputs that carry a Keras
mask; optional]}``. A module is a stock ``torch.nn`` module (or a
helper of ``lightning_cnn.nets.layers``) named after its Keras layer; a node is one Keras call, a chain of steps (see
``vocabulary``). Every name is looked up in ``vocabulary``'s allow-lists and every field is checked when read
(``check_graph``), so a folder can only describe compositions of known modules and functions, of bounded size.
"""

from __future__ import annotations

import json
import keyword
import math
import os
import re
from pathlib import Path

import torch
from torch import fx, nn

from ..errors import UserError
from .rules import LAYOUT_RULE
from .vocabulary import FUNCTIONS, HELPER_FUNCTIONS, METHODS, MODULES, is_ref, is_submodule

FORMAT, VERSION = "lightning-cnn-graph", 2
__all__ = ["FORMAT", "VERSION", "LAYOUT_RULE", "ConvertedModelError", "python_name", "check_graph", "build_twin",
           "load_converted", "read_graph", "channels_last_inputs", "set_input_memory_format"]


class ConvertedModelError(ValueError, UserError):
    """A converted folder that cannot be loaded (missing, corrupt, tampered or mismatched files)."""


# Names a module or value may not take: nn.Module/GraphModule attributes (``training``, ``forward``,
# ``state_dict``, ...) and the names model.py's code uses (its helper functions too: a value of that name would
# shadow the function in ``forward``).
RESERVED = frozenset({"self", "torch", "F", "nn", "math", "operator", "Path", "load", "load_file", "training",
                      *HELPER_FUNCTIONS})

# Bounds on what a file may ask for before anything is built. The largest keras.applications model has ~1,300
# layers; a real image or sequence extent is far below 2**16.
MAX_GRAPH_BYTES = 16 << 20  # the largest keras.applications graph.json is ~2 MB
MAX_NODES = 20_000
MAX_STEPS = 16
MAX_DEPTH = 16  # JSON nesting inside a field (args are flat lists of numbers in practice)
MAX_EXTENT = 1 << 16
DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})


def _reserved(name: str) -> bool:
    return name in RESERVED or name.startswith("_") or hasattr(fx.GraphModule, name) or hasattr(nn.Module(), name)


def python_name(name: str, taken: set) -> str:
    """A Keras layer name as a unique Python identifier (module attributes, fx node and model.py variables)."""
    out = re.sub(r"\W", "_", name) or "layer"
    if out[0].isdigit() or keyword.iskeyword(out) or _reserved(out):
        out = f"layer_{out.lstrip('_')}"
    base, i = out, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def _fail(where: str, why: str):
    raise ConvertedModelError(f"{where}: {why}; re-create the folder with python -m keras_ref.convert")


class _Checker:
    """Validates one graph.json, field by field: ``fail`` names the file and the field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, why: str):
        _fail(self.where, f"{field}: {why}")

    def of_type(self, field: str, value, kind, name: str):
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.fail(field, f"expected {name}, got {type(value).__name__} {_short(value)}")
        return value

    def identifier(self, field: str, value) -> str:
        self.of_type(field, value, str, "a name")
        if not value.isidentifier() or keyword.iskeyword(value) or _reserved(value):
            self.fail(field, f"{value!r} is not a usable name (a Python identifier, not reserved such as "
                             "'training', 'forward' or 'state_dict')")
        return value

    def literal(self, field: str, value, depth: int = 0, bounded: bool = True):
        """A JSON argument: numbers (bounded by MAX_EXTENT where no weight vouches for them), strings, lists."""
        if depth > MAX_DEPTH:
            self.fail(field, f"nested deeper than {MAX_DEPTH}")
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or (bounded and abs(value) > MAX_EXTENT):
                self.fail(field, f"{value!r} is beyond the bound {MAX_EXTENT}")
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                self.literal(f"{field}[{i}]", item, depth + 1, bounded)
            return
        if is_ref(value) or is_submodule(value):
            self.fail(field, "a reference is only allowed in a step's args")
        self.fail(field, f"{type(value).__name__} {_short(value)} is not an argument value")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _growth(spec: dict) -> float:
    """How much a module can enlarge its input (upsampling, transposed-convolution strides)."""
    kwargs = spec["kwargs"]
    if spec["cls"] == "nn.Upsample":
        factor = kwargs.get("scale_factor", 1)
        return math.prod(factor) if isinstance(factor, list) else float(factor) ** 2
    if spec["cls"].startswith("nn.ConvTranspose"):
        stride = kwargs.get("stride", 1)
        return math.prod(stride) if isinstance(stride, list) else float(stride)
    return 1.0


def check_graph(graph, where: str = "graph.json") -> dict:
    """``graph`` with every field checked (types, names, references, bounds); ConvertedModelError otherwise."""
    c = _Checker(where)
    c.of_type("the file", graph, dict, "a JSON object")
    if graph.get("format") != FORMAT:
        c.fail("format", f"not a {FORMAT} file")
    if graph.get("version") != VERSION:
        c.fail("version", f"format version {graph.get('version')!r}, this lightning_cnn reads version {VERSION} "
                          "(folders written before it must be converted again)")
    c.of_type("name", graph.get("name"), str, "a string")
    c.identifier("class_name", graph.get("class_name"))
    inputs = c.of_type("inputs", graph.get("inputs"), list, "a list")
    modules = c.of_type("modules", graph.get("modules"), list, "a list")
    nodes = c.of_type("nodes", graph.get("nodes"), list, "a list")
    outputs = c.of_type("outputs", graph.get("outputs"), list, "a list")
    if not inputs:
        c.fail("inputs", "empty: the model needs at least one input")
    if not outputs:
        c.fail("outputs", "empty: the model needs at least one output")
    if len(nodes) > MAX_NODES or len(modules) > MAX_NODES:
        c.fail("nodes", f"{len(nodes)} nodes / {len(modules)} modules, more than the bound {MAX_NODES}")
    values: dict[str, float] = {}  # value name -> how much it may have grown over the inputs
    for i, spec in enumerate(inputs):
        field = f"inputs[{i}]"
        c.of_type(field, spec, dict, "an object")
        name = c.identifier(f"{field}.name", spec.get("name"))
        if name in values:
            c.fail(f"{field}.name", f"{name!r} is used twice")
        shape = c.of_type(f"{field}.shape", spec.get("shape"), list, "a list (batch first, None = any size)")
        if not shape or shape[0] is not None:
            c.fail(f"{field}.shape", f"{_short(shape)}: the first (batch) entry must be null")
        for j, size in enumerate(shape[1:], 1):
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_EXTENT):
                c.fail(f"{field}.shape[{j}]", f"{_short(size)} is not null or a size from 1 to {MAX_EXTENT}")
        if spec.get("dtype") not in DTYPES:
            c.fail(f"{field}.dtype", f"{_short(spec.get('dtype'))} is not one of {', '.join(sorted(DTYPES))}")
        values[name] = 1.0
    growth_of: dict[str, float] = {}
    for i, entry in enumerate(modules):
        field = f"modules[{i}]"
        c.of_type(field, entry, dict, "an object")
        name = c.identifier(f"{field}.name", entry.get("name"))
        if name in growth_of:
            c.fail(f"{field}.name", f"{name!r} is used twice")
        for key in ("keras_class", "keras_path"):
            c.of_type(f"{field}.{key}", entry.get(key), str, "a string")
        spec = c.of_type(f"{field}.module", entry.get("module"), dict, "an object")
        if spec.get("cls") not in MODULES:
            c.fail(f"{field}.module.cls", f"unknown module {_short(spec.get('cls'))} (known: "
                                          f"{', '.join(sorted(MODULES))})")
        args = c.of_type(f"{field}.module.args", spec.get("args"), list, "a list")
        kwargs = c.of_type(f"{field}.module.kwargs", spec.get("kwargs"), dict, "an object")
        frozen = c.of_type(f"{field}.module.frozen", spec.get("frozen"), list, "a list")
        weighted = _has_parameters(spec["cls"])
        c.literal(f"{field}.module.args", args, bounded=not weighted)  # sizes of weights: the header vouches
        for key, value in kwargs.items():
            if not key.isidentifier():
                c.fail(f"{field}.module.kwargs", f"{_short(key)} is not a keyword")
            c.literal(f"{field}.module.kwargs.{key}", value)
        for j, parameter in enumerate(frozen):
            c.of_type(f"{field}.module.frozen[{j}]", parameter, str, "a parameter name")
        growth_of[name] = _growth(spec)
    for i, node in enumerate(nodes):
        field = f"nodes[{i}]"
        c.of_type(field, node, dict, "an object")
        name = c.identifier(f"{field}.name", node.get("name"))
        if name in values:
            c.fail(f"{field}.name", f"{name!r} is used twice")
        for key in ("keras_class", "keras_path"):
            c.of_type(f"{field}.{key}", node.get(key), str, "a string")
        reads = c.of_type(f"{field}.inputs", node.get("inputs"), list, "a list of value names")
        for value in reads:
            if not isinstance(value, str) or value not in values:
                c.fail(f"{field}.inputs", f"reads {_short(value)} before it is computed")
        steps = c.of_type(f"{field}.steps", node.get("steps"), list, "a list")
        if not 0 < len(steps) <= MAX_STEPS:
            c.fail(f"{field}.steps", f"{len(steps)} steps (from 1 to {MAX_STEPS})")
        growth = max((values[v] for v in reads), default=1.0)
        for j, step in enumerate(steps):
            growth *= _check_step(c, f"{field}.steps[{j}]", step, len(reads), j, growth_of)
        if growth > MAX_EXTENT:
            c.fail(field, f"enlarges its input {growth:g}-fold (upsampling, transposed convolutions) beyond the "
                          f"bound {MAX_EXTENT}")
        values[name] = growth
    for i, value in enumerate(outputs):
        if not isinstance(value, str) or value not in values:
            c.fail(f"outputs[{i}]", f"{_short(value)} is not a computed value")
    for i, value in enumerate(c.of_type("masked_outputs", graph.get("masked_outputs", []), list, "a list")):
        if value not in outputs:
            c.fail(f"masked_outputs[{i}]", f"{_short(value)} is not an output")
    return graph


def _has_parameters(cls: str) -> bool:
    return cls.startswith(("nn.Conv", "nn.Linear", "nn.Bilinear", "nn.BatchNorm", "nn.LayerNorm", "nn.GroupNorm",
                           "nn.RMSNorm", "nn.Embedding", "nn.LSTM", "nn.GRU", "nn.RNN", "nn.MultiheadAttention",
                           "nn.PReLU", "ElementwisePReLU", "Rescale", "Normalize", "LayerScale"))


def _check_step(c: _Checker, field: str, step, n_inputs: int, index: int, growth_of: dict) -> float:
    c.of_type(field, step, dict, "an object")
    kinds = [k for k in ("module", "function", "method") if k in step]
    if len(kinds) != 1 or set(step) - {kinds[0], "args", "kwargs"}:
        c.fail(field, "a step has exactly one of module/function/method, and args/kwargs")
    kind, target = kinds[0], step[kinds[0]]
    growth = 1.0
    if kind == "module":
        if target not in growth_of:
            c.fail(f"{field}.module", f"calls unknown module {_short(target)}")
        growth = growth_of[target]
        if "kwargs" in step:
            c.fail(f"{field}.kwargs", "a module step takes no kwargs")
    elif kind == "function" and target not in FUNCTIONS:
        c.fail(f"{field}.function", f"unknown function {_short(target)} (known: {', '.join(sorted(FUNCTIONS))})")
    elif kind == "method" and target not in METHODS:
        c.fail(f"{field}.method", f"unknown method {_short(target)} (known: {', '.join(sorted(METHODS))})")
    args = c.of_type(f"{field}.args", step.get("args", []), list, "a list")
    kwargs = c.of_type(f"{field}.kwargs", step.get("kwargs", {}), dict, "an object")
    for j, arg in enumerate(args):
        if is_ref(arg):
            ref = arg["$"]
            if not (ref in ("x", "inputs") or isinstance(ref, int) and not isinstance(ref, bool)
                    and 0 <= ref < n_inputs):
                c.fail(f"{field}.args[{j}]", f"bad reference {_short(arg)}")
            if ref == "x" and index == 0 and n_inputs == 0:
                c.fail(f"{field}.args[{j}]", "the first step of a call without inputs has no x")
        elif is_submodule(arg):
            if kind != "function" or target not in HELPER_FUNCTIONS:
                c.fail(f"{field}.args[{j}]", f"a module is passed only to a helper function "
                                             f"({', '.join(sorted(HELPER_FUNCTIONS))})")
            if arg["$module"] not in growth_of:
                c.fail(f"{field}.args[{j}]", f"passes unknown module {_short(arg['$module'])}")
        else:
            c.literal(f"{field}.args[{j}]", arg)
    for key, value in kwargs.items():
        if not key.isidentifier():
            c.fail(f"{field}.kwargs", f"{_short(key)} is not a keyword")
        c.literal(f"{field}.kwargs.{key}", value)
    if target == "repeat_interleave":
        growth = float(max((a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)), default=1))
    return growth


def _tuples(value):
    """JSON lists as the tuples torch's constructors and functions are written with."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def build_module(spec: dict) -> nn.Module:
    module = MODULES[spec["cls"]](*_tuples(spec["args"]), **{k: _tuples(v) for k, v in spec["kwargs"].items()})
    for parameter in spec["frozen"]:
        module.get_parameter(parameter).requires_grad_(False)
    return module


# Modules whose oneDNN (CPU) and cuDNN kernels run fastest on channels-last (NHWC) memory.
_CHANNELS_LAST_MODULES = frozenset({"nn.Conv2d", "nn.ConvTranspose2d"})


def channels_last_inputs(graph: dict) -> list:
    """The rank-4 inputs the twin and model.py put in channels-last memory on entry (NHWC, Keras's own layout;
    the shape stays NCHW), in a graph with 2-D convolutions: every op after them then keeps that layout, and
    PyTorch's CPU convolutions on NHWC memory go to oneDNN (a contiguous NCHW input made the twin 1.2-1.9x slower
    on ResNet50, Xception, NASNetMobile, EfficientNetB0, DenseNet121 and VGG16, 1 thread, batch 1-32)."""
    if not any(entry["module"]["cls"] in _CHANNELS_LAST_MODULES for entry in graph["modules"]):
        return []
    return [spec["name"] for spec in graph["inputs"] if len(spec["shape"]) == 4]


_LAYOUT_SUFFIX = "_layout"  # the entry node of an input (a name no Keras value can take: it starts with "_")


def set_input_memory_format(twin: fx.GraphModule, memory_format: torch.memory_format) -> None:
    """Sets the memory format the twin puts its rank-4 inputs in on entry (``channels_last_inputs``; the speed
    seam's ``channels_last`` switch): ``torch.contiguous_format`` runs it in NCHW memory throughout."""
    entries = [node for node in twin.graph.nodes if node.op == "call_method" and node.target == "contiguous"
               and node.name.startswith("_") and node.name.endswith(_LAYOUT_SUFFIX)
               and node.args[0].op == "placeholder"]
    for node in entries:
        node.update_kwarg("memory_format", memory_format)
    if entries:
        twin.recompile()


def build_twin(graph: dict, where: str = "graph.json") -> fx.GraphModule:
    """The twin (randomly initialised) that ``graph`` describes; every field is checked first."""
    check_graph(graph, where)
    root = nn.Module()
    for i, entry in enumerate(graph["modules"]):
        try:
            module = build_module(entry["module"])
        except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, ZeroDivisionError,
                OverflowError) as error:
            _fail(where, f"modules[{i}] {entry['name']!r} ({entry['module']['cls']}): bad arguments "
                         f"{_short(entry['module']['args'])} {_short(entry['module']['kwargs'])} ({error})")
        module.keras_class, module.keras_path = entry["keras_class"], entry["keras_path"]
        root.add_module(entry["name"], module)
    g = fx.Graph()
    placeholders = {spec["name"]: g.placeholder(spec["name"]) for spec in graph["inputs"]}
    values = dict(placeholders)
    for name in channels_last_inputs(graph):
        values[name] = g.create_node("call_method", "contiguous", (values[name],),
                                     {"memory_format": torch.channels_last}, name=f"_{name}{_LAYOUT_SUFFIX}")
    for node in graph["nodes"]:
        reads = [values[v] for v in node["inputs"]]
        current = reads[0] if reads else None
        for i, step in enumerate(node["steps"]):
            args = tuple(g.create_node("get_attr", a["$module"], name=f"_{node['name']}_{i}_{a['$module']}")
                         if is_submodule(a) else _resolve(a, current, reads) for a in step.get("args", []))
            kwargs = {k: _tuples(v) for k, v in step.get("kwargs", {}).items()}
            # the call's value takes its name; the steps before it get names no Keras value can have
            name = node["name"] if i == len(node["steps"]) - 1 else f"_{node['name']}_{i}"
            if "module" in step:
                current = g.create_node("call_module", step["module"], args, {}, name=name)
            elif "function" in step:
                current = g.create_node("call_function", FUNCTIONS[step["function"]], args, kwargs, name=name)
            else:
                current = g.create_node("call_method", step["method"], args, kwargs, name=name)
        values[node["name"]] = current
    outs = [values[v] for v in graph["outputs"]]
    g.output(outs[0] if len(outs) == 1 else tuple(outs))
    twin = fx.GraphModule(root, g, class_name=graph["class_name"])
    twin.keras_name = graph["name"]
    twin.input_specs = graph["inputs"]
    twin.masked_outputs = graph.get("masked_outputs", [])  # Keras weights their loss by the mask (not reproduced)
    # graph.json value name -> the fx node computing it (fx renames a value that shadows a builtin: max -> max_1)
    twin.node_names = {value: node.name for value, node in {**values, **placeholders}.items()}
    # input name -> the Keras classes of the calls that read it directly (what data an input takes: ids, pixels)
    twin.input_readers = {spec["name"]: [node["keras_class"] for node in graph["nodes"]
                                         if spec["name"] in node["inputs"]] for spec in graph["inputs"]}
    return twin


def _resolve(arg, current, reads):
    if not is_ref(arg):
        return _tuples(arg)
    ref = arg["$"]
    return current if ref == "x" else list(reads) if ref == "inputs" else reads[ref]


def read_graph(path: Path) -> dict:
    """graph.json parsed and checked, its size bounded before it is read (a huge file is refused unread)."""
    try:
        size = path.stat().st_size
    except OSError as error:
        _fail(str(path), f"cannot read ({error})")
    if size > MAX_GRAPH_BYTES:
        _fail(str(path), f"{size:,} bytes, more than the bound {MAX_GRAPH_BYTES:,}")
    try:
        graph = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        _fail(str(path), f"not valid JSON ({error})")
    except RecursionError:
        _fail(str(path), "nested too deeply to be a graph")
    return check_graph(graph, str(path))


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


def load_converted(path: str | os.PathLike, for_inference: bool = False, speed=None) -> fx.GraphModule:
    """The twin saved by ``python -m keras_ref.convert`` (graph.json + weights.safetensors), in eval mode.

    ``for_inference``: its fast inference copy instead (``Speed.inference_model``: ``prepare_for_inference`` on a
    CPU, unless ``speed`` (a ``lightning_cnn.speed.Speed``) switches ``inference_copy`` off); eval only.

    Reads only those two files: JSON and safetensors (no pickle, no code from the folder); TensorFlow and Keras
    are not needed. The twin is first built without storage (meta device) and checked against the weights file's
    header: names and shapes must match exactly, else ConvertedModelError, before anything is allocated; weights
    that are not finite (NaN, inf) are refused too.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    graph_path, weights_path = folder / "graph.json", folder / "weights.safetensors"
    for file in (graph_path, weights_path):
        if not file.is_file():
            raise ConvertedModelError(f"{file} does not exist: {folder} is not a converted model folder "
                                      "(python -m keras_ref.convert MODEL.keras --out FOLDER writes one)")
    graph = read_graph(graph_path)
    with torch.device("meta"):
        twin = build_twin(graph, str(graph_path))
    _check_against_header(twin, weights_path)
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as error:
        _fail(str(weights_path), f"cannot read ({error})")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            _fail(str(weights_path), f"weight {key} holds NaN or infinite values (a diverged or damaged model)")
    twin = twin.to_empty(device="cpu")
    twin.load_state_dict(state)
    if for_inference:
        from ..speed import Speed

        return (speed or Speed()).inference_model(twin.eval())
    return twin.eval()
