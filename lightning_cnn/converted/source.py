"""model.py: a converted graph as one self-contained PyTorch source file (imports only torch and safetensors).

Written from the same checked graph.json the twin is built from: ``__init__`` constructs each stock module under
its Keras layer's name, ``forward`` has one statement per Keras call (its chain of steps nested as one expression),
helper classes and functions of ``lightning_cnn.nets.layers`` are copied in from their source only when used,
and ``load(folder)`` reads ``weights.safetensors`` with ``strict=True``. Every name written comes from
``vocabulary``'s allow-lists or is a checked identifier; literal values are written with ``repr`` of JSON
numbers/strings, so the file is code the converter chose, never text copied from a Keras file.
"""

from __future__ import annotations

import inspect

from ..nets import layers
from .graph import LAYOUT_RULE, channels_last_inputs, check_graph
from .vocabulary import HELPER_FUNCTIONS, HELPERS, INFIX, is_ref, is_submodule

# Functions of lightning_cnn.nets.layers a helper class calls (copied in before it).
_HELPER_FUNCTIONS = {"SamePad": (layers.tf_same_pads,), "SamePool": (layers.tf_same_pads,)}


def _literal(value) -> str:
    if isinstance(value, list):
        items = [_literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(value, float) and value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value)


def _call_args(args: list, kwargs: dict) -> str:
    return ", ".join([*args, *(f"{k}={_literal(v)}" for k, v in kwargs.items())])


class _Expression:
    """A step's code, and whether it is an infix expression (parenthesized when nested)."""

    def __init__(self, text: str, infix: bool = False):
        self.text, self.infix = text, infix

    def operand(self) -> str:
        return f"({self.text})" if self.infix else self.text


def _arg(arg, current: _Expression | None, reads: list) -> _Expression:
    if is_submodule(arg):
        return _Expression(f"self.{arg['$module']}")
    if not is_ref(arg):
        return _Expression(_literal(arg))
    ref = arg["$"]
    if ref == "x":
        return current
    if ref == "inputs":
        return _Expression(f"[{', '.join(reads)}]")
    return _Expression(reads[ref])


def _step_code(step: dict, current: _Expression | None, reads: list) -> _Expression:
    args = [_arg(a, current, reads) for a in step.get("args", [])]
    kwargs = step.get("kwargs", {})
    if "module" in step:
        return _Expression(f"self.{step['module']}({_call_args([a.text for a in args], {})})")
    if "method" in step:
        this, rest = args[0], args[1:]
        return _Expression(f"{this.operand()}.{step['method']}({_call_args([a.text for a in rest], kwargs)})")
    function = step["function"]
    if function in INFIX and len(args) == 2 and not kwargs:
        return _Expression(f"{args[0].operand()} {INFIX[function]} {args[1].operand()}", infix=True)
    if function == "operator.getitem" and len(args) == 2 and not kwargs:
        return _Expression(f"{args[0].operand()}[{args[1].text}]")
    if function == "operator.neg" and len(args) == 1:
        return _Expression(f"-{args[0].operand()}", infix=True)
    return _Expression(f"{function}({_call_args([a.text for a in args], kwargs)})")


def _uses_x_twice(step: dict) -> bool:
    return sum(1 for a in step.get("args", []) if is_ref(a) and a["$"] == "x") > 1


def _readers(graph: dict) -> dict:
    """Each value's name -> the indices of the nodes that read it, in order."""
    readers = {}
    for i, node in enumerate(graph["nodes"]):
        for name in dict.fromkeys(node["inputs"]):
            readers.setdefault(name, []).append(i)
    return readers


def _variable_names(graph: dict, readers: dict) -> tuple[dict, str]:
    """Each node's output variable, and the one name that carries a chain. A node's output read only by the next
    node is written into the chain's variable (``x = self.conv1_bn(x)``, as hand-written code does): each such
    tensor is freed as soon as the next statement has run, and the layer's name stays on its module or comment."""
    taken = {spec["name"] for spec in graph["inputs"]} | {node["name"] for node in graph["nodes"]}
    chain = next(name for name in ("x", "h", "y", "z", *(f"x{i}" for i in range(len(taken) + 1)))
                 if name not in taken)
    names = {}
    for i, node in enumerate(graph["nodes"]):
        chained = (node["name"] not in graph["outputs"] and readers.get(node["name"]) == [i + 1]
                   and not any(_uses_x_twice(step) for step in node["steps"]))
        names[node["name"]] = chain if chained else node["name"]
    return names, chain


def _forward_lines(graph: dict) -> list:
    """``forward``'s statements: one per Keras call, then ``del`` of the named tensors it read for the last time
    (as the twin's fx graph frees them: holding every activation to the end made model.py 0.55-0.7x the twin's
    images/s at batch 8-32 on ResNet50)."""
    readers = _readers(graph)
    names, chain = _variable_names(graph, readers)
    last_read = {name: indices[-1] for name, indices in readers.items()}
    inputs = {spec["name"] for spec in graph["inputs"]}
    lines = [f"{name} = {name}.contiguous(memory_format=torch.channels_last)  # NHWC memory: oneDNN/cuDNN convolve "
             "it fastest" for name in channels_last_inputs(graph)]
    for i, node in enumerate(graph["nodes"]):
        reads = [names.get(name, name) for name in node["inputs"]]
        current = _Expression(reads[0]) if reads else None
        for step in node["steps"]:
            if current is not None and _uses_x_twice(step) and current.text not in reads:
                lines.append(f"{node['name']} = {current.text}")  # computed once, used twice below
                current = _Expression(node["name"])
            current = _step_code(step, current, reads)
        keras_name = node["keras_path"].rsplit("/", 1)[-1]
        variable = names[node["name"]]
        if keras_name != node["name"]:
            comment = f"  # Keras {node['keras_class']} {node['keras_path']!r}"
        elif variable != node["name"] and f"self.{node['name']}(" not in current.text:
            comment = f"  # {node['name']}"
        else:
            comment = ""
        lines.append(f"{variable} = {current.text}{comment}")
        dead = [name for name in dict.fromkeys(node["inputs"]) if last_read[name] == i and names.get(name) != chain
                and name not in inputs and name not in graph["outputs"]]
        if node["name"] not in last_read and node["name"] not in graph["outputs"]:
            dead.append(node["name"])  # read by nothing: a layer's unused output
        if dead:
            lines.append(f"del {', '.join(dead)}")
    outputs = graph["outputs"]
    lines.append(f"return {outputs[0]}" if len(outputs) == 1 else f"return {', '.join(outputs)}")
    return lines


def _init_lines(graph: dict) -> list:
    lines = []
    for entry in graph["modules"]:
        spec = entry["module"]
        keras_name = entry["keras_path"].rsplit("/", 1)[-1]
        comment = "" if keras_name == entry["name"] else f"  # Keras {entry['keras_class']} {entry['keras_path']!r}"
        args = _call_args([_literal(a) for a in spec["args"]], spec["kwargs"])
        lines.append(f"self.{entry['name']} = {spec['cls']}({args}){comment}")
        for parameter in spec["frozen"]:
            lines.append(f"self.{entry['name']}.{parameter}.requires_grad_(False)  # Keras has no such weight")
    return lines


def _helpers(graph: dict) -> list:
    used = [name for name in HELPERS if any(e["module"]["cls"] == name for e in graph["modules"])]
    functions = [HELPER_FUNCTIONS[name] for name in HELPER_FUNCTIONS
                 if any(step.get("function") == name for node in graph["nodes"] for step in node["steps"])]
    for name in used:
        functions += [f for f in _HELPER_FUNCTIONS.get(name, ()) if f not in functions]
    return [inspect.getsource(f) for f in functions] + [inspect.getsource(HELPERS[name]) for name in used]


def model_source(graph: dict) -> str:
    """The text of model.py for ``graph`` (checked first)."""
    check_graph(graph)
    cls = graph["class_name"]
    names = [spec["name"] for spec in graph["inputs"]]
    layout = "\n".join(f"    {spec['name']}: Keras shape {spec['shape']}, {spec['dtype']}" for spec in graph["inputs"])
    indent = "\n" + " " * 8
    helpers = _helpers(graph)
    imports = ("import math\n" if any("math." in text for text in helpers) else "") + "from pathlib import Path\n"
    parts = [
        f'"""{cls}: PyTorch source of the Keras model {graph["name"]!r}, written by python -m keras_ref.convert.\n\n'
        f"Plain PyTorch: edit it freely. Layout: {LAYOUT_RULE}. Inputs:\n{layout}\n\n"
        f"    model = load()  # this folder's weights.safetensors (strict: the keys are this class's state_dict)\n"
        '"""\n',
        f"{imports}\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n",
        *[f"\n\n{text}" for text in helpers],
        f"\n\nclass {cls}(nn.Module):\n    def __init__(self):\n        super().__init__()"
        + "".join(indent + line for line in _init_lines(graph)) + "\n",
        f"\n    def forward(self, {', '.join(names)}):" + "".join(indent + line for line in _forward_lines(graph)) + "\n",
        f"\n\ndef load(folder=None, device=\"cpu\") -> {cls}:\n"
        f'    """{cls} with the weights of ``folder`` (default: the folder of this file), in eval mode."""\n'
        "    from safetensors.torch import load_file\n\n"
        f"    model = {cls}()\n"
        '    weights = Path(folder) if folder is not None else Path(__file__).resolve().parent\n'
        '    model.load_state_dict(load_file(weights / "weights.safetensors", device=str(device)), strict=True)\n'
        "    return model.to(device).eval()\n",
    ]
    return "".join(parts)
