"""Convert any Keras 3 functional graph to plain PyTorch: a twin of stock modules, its source, weights both ways.

- ``convert(keras_model)``: the twin, a ``torch.fx.GraphModule`` of stock ``torch.nn`` modules named after the
  Keras layers (its ``.code`` reads as the Keras graph), weights copied, in eval mode.
- ``save_converted(keras_model, out_dir)``: ``graph.json`` + ``weights.safetensors`` (what
  ``lightning_cnn.load_converted`` reads without TensorFlow), ``model.py`` (the same model as one self-contained
  PyTorch file: ``from model import load``), ``parity.json`` (the check that was run) and, for a compiled model,
  ``compile.json``. Written to a temporary folder first: a failed save leaves nothing behind.
- ``copy_weights_to_keras(twin, keras_model)``: the weights back (fine-tune in PyTorch, check in Keras).
- CLI: ``python -m keras_ref.convert MODEL.keras --out FOLDER [--inputs x.npz] [--atol 1e-6]``.

The rules (one per layer family: config checks, emitted modules and steps, weight maps both ways) live TF-free in
``lightning_cnn.converted.rules``; this module walks the Keras graph (which needs TensorFlow) and calls them.
Layout: rank-4 tensors are NHWC in Keras and NCHW in torch; every other rank keeps Keras's layout
(``LAYOUT_RULE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import lightning_cnn  # noqa: E402  (its version goes into parity.json)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from keras_ref.graph import from_twin_output, functional_graph, to_twin_input  # noqa: E402
from keras_ref.layerwise import SAMPLES, compare_layers, summarize  # noqa: E402
from keras_ref.operations import call_arguments, describe, is_operation  # noqa: E402
from keras_ref.parity import ParityError, keras_config_size, load_keras_model  # noqa: E402
from lightning_cnn.atomic import replace_folder, write_text  # noqa: E402
from lightning_cnn.converted.graph import (FORMAT, LAYOUT_RULE, VERSION, ConvertedModelError,  # noqa: E402
                                           build_twin, python_name)
from lightning_cnn.converted.rules import RULES, Emitter, LayerCall  # noqa: E402
from lightning_cnn.converted.source import model_source  # noqa: E402
from lightning_cnn.errors import exit_on_user_error  # noqa: E402
from keras_ref.cli_checks import (MAX_INPUT_BYTES, MAX_SAMPLES, check_count, check_seed,  # noqa: E402
                                  check_tolerance, model_samples, read_inputs)
from keras_ref.tolerance import (ATOL, RULE, float64_inputs, float64_twin, max_abs, tolerance,  # noqa: E402
                                 within)

__all__ = ["convert", "save_converted", "copy_weights_to_keras", "extract_graph", "RULES", "supported_layers",
           "layer_table", "main"]


def supported_layers() -> dict[str, str]:
    """Keras layer class -> the rule family (file of ``lightning_cnn.converted.rules``) that converts it."""
    return {name: type(rule).__module__.rsplit(".", 1)[-1] for name, rule in sorted(RULES.items())}


def layer_table() -> str:
    """The Markdown table of docs/converting.md (a test keeps the two identical; ``python -m keras_ref.convert
    --supported`` prints it): rule family -> the Keras layer classes and raw keras.ops calls it converts."""
    layers_of: dict[str, list] = {}
    ops_of: dict[str, list] = {}
    for name, family in supported_layers().items():
        if name.startswith("keras."):  # keras.ops.add -> `add`, keras.activations.relu -> `activations.relu`
            ops_of.setdefault(family, []).append(f"`{name.removeprefix('keras.').removeprefix('ops.')}`")
        else:
            layers_of.setdefault(family, []).append(f"`{name}`")
    lines = ["| rule family (`lightning_cnn/converted/rules/`) | Keras layer classes | raw `keras.ops` calls |",
             "|---|---|---|"]
    return "\n".join(lines + [f"| `{family}.py` | {', '.join(layers_of.get(family, [])) or '-'} | "
                              f"{', '.join(ops_of.get(family, [])) or '-'} |"
                              for family in sorted(set(layers_of) | set(ops_of))])


# --- walking the Keras graph -------------------------------------------------------------------------------------


class Extraction:
    """graph.json's content plus, per Keras layer, the LayerCall its weight maps need (its first call)."""

    def __init__(self):
        self.graph: dict = {}
        self.calls: dict = {}  # id(layer) -> LayerCall
        self.sequence: list = []  # [(LayerCall, input value names, output value name)], one per Keras call
        self.results: dict = {}  # a call's value -> its results' value names, for calls with several results
        self.tensors: dict = {}  # value name -> the KerasTensor it is (inputs and every call's results)


def _shape(shape) -> list:
    return [None if d is None else int(d) for d in shape]


def _trace(model, taken: set) -> tuple[list, list, list, dict, dict]:
    """(inputs, [(LayerCall, input value names, output value name)] in dependency order, outputs, results of
    several-result calls, value name -> KerasTensor); nested models are inlined. A layer called twice shares one LayerCall (one set of
    modules). Raw keras.ops calls are calls too, each its own (``LayerCall.arguments`` says which operation)."""
    calls: dict[int, LayerCall] = {}
    sequence = []
    results: dict[str, list] = {}
    tensors: dict = {}

    def trace(submodel, input_values: list, prefix: str) -> list:
        graph = functional_graph(submodel)
        env = {id(t): v for t, v in zip(graph.inputs, input_values)}
        for tensor, value in zip(graph.inputs, input_values):
            tensors.setdefault(value, tensor)
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if type(op).__name__ == "InputLayer":
                    continue
                path = f"{prefix}{op.name}"
                ins = [env[id(t)] for t in node.input_tensors]
                if isinstance(op, keras.Model):
                    if _masks_passed(node):  # Keras would set them on the inner inputs: inner layers use them
                        raise ParityError(f"layer {path!r} ({type(op).__name__}): a nested model receives a mask "
                                          f"({', '.join(_masks_passed(node))}), which the converter does not pass "
                                          "inside; build the model flat (its layers called in the outer model)")
                    outs = trace(op, ins, path + "/")
                else:
                    value = layer_call(op, path, node, ins)
                    outs = [value] if len(node.output_tensors) == 1 else results[value]
                for tensor, value in zip(node.output_tensors, outs):
                    env[id(tensor)] = value
                    tensors.setdefault(value, tensor)
        return [env[id(t)] for t in graph.outputs]

    def layer_call(layer, path, node, ins):
        in_shapes = [_shape(t.shape) for t in node.input_tensors]
        call = LayerCall(layer, path, "", in_shapes, [_shape(t.shape) for t in node.output_tensors],
                         epsilon=float(keras.config.epsilon()))
        if is_operation(layer):
            try:
                described = describe(node)
            except ValueError as error:
                call.fail(f"{error}; write it with keras.ops calls on tensors and Python numbers")
            call.arguments = dict(kind=described.kind, config=described.config, args=described.args,
                                  kwargs=described.kwargs)
            if call.kind not in RULES:
                call.fail("this keras.ops operation is not supported by the converter; write it with a supported "
                          "one or a Keras layer (python -m keras_ref.convert --supported lists them)")
        elif type(layer).__name__ not in RULES:
            call.fail("unsupported layer for the converter (python -m keras_ref.convert --supported lists the "
                      "supported ones); add a rule in lightning_cnn/converted/rules/ or replace the layer")
        else:
            call.arguments = call_arguments(node)
            masks = _masks_passed(node)
            if masks and not (RULES[call.kind].takes_mask(call) and call.arguments):
                call.fail(f"receives a mask ({', '.join(masks)}: from Masking or Embedding(mask_zero=True)) that "
                          "the converter does not implement for this layer (only LSTM, GRU, SimpleRNN and "
                          "Bidirectional take masks); remove the mask before it or convert without masking")
        if id(layer) in calls and not call.is_operation:
            first = calls[id(layer)]
            if first.in_shapes != in_shapes:
                call.fail("is called on inputs of different shapes; a shared layer must see one shape")
            call = first
        else:
            call.name = python_name(path.replace("/", "__"), taken)
            calls[id(layer)] = call
        value = python_name(call.name, taken) if any(c is call for c, _, _ in sequence) else call.name
        sequence.append((call, ins, value))
        if len(node.output_tensors) > 1:
            results[value] = [python_name(f"{value}_{i}", taken) for i in range(len(node.output_tensors))]
        return value

    inputs = input_specs(model, taken)
    outputs = trace(model, [i["name"] for i in inputs], "")
    return inputs, sequence, outputs, results, tensors


def _masks_passed(node) -> list:
    """The call's keyword arguments that carry a mask tensor (``mask=``, attention's ``query_mask=``...): Keras
    fills them from the inputs' masks for a layer whose call takes them."""
    return [f"{key}=" for key, value in node.arguments.kwargs.items() if (key == "mask" or key.endswith("_mask"))
            and any(isinstance(v, keras.KerasTensor) for v in keras.tree.flatten(value))]


def input_specs(model, taken: set | None = None) -> list[dict]:
    """graph.json's ``inputs``: name (as in the twin's code), shape (batch axis first) and dtype per model input."""
    taken = set() if taken is None else taken
    return [dict(name=python_name(tensor._keras_history.operation.name, taken), shape=_shape(tensor.shape),
                 dtype=str(tensor.dtype)) for tensor in functional_graph(model).inputs]


def _flatten_before_dense(sequence: list, outputs: list) -> None:
    """A Flatten of an (H, W, C) tensor read only by Dense layers (each called once) flattens channels first and
    those Dense layers get their input columns permuted instead (no NHWC copy at run time)."""
    readers: dict[str, list] = {}
    uses: dict[int, int] = {}
    for call, ins, _ in sequence:
        uses[id(call)] = uses.get(id(call), 0) + 1
        for value in ins:
            readers.setdefault(value, []).append(call)
    for call, _, value in sequence:
        if call.kind != "Flatten" or call.rank != 4 or uses[id(call)] != 1 or value in outputs:
            continue
        consumers = readers.get(value, [])
        if consumers and all(r.kind == "Dense" and uses[id(r)] == 1 for r in consumers):
            call.flatten_chw = True
            for reader in consumers:
                reader.flatten_hwc = tuple(call.in_shapes[0][1:])


def extract_graph(model) -> Extraction:
    """Walk ``model`` into graph.json's structure (format version 2); ParityError (one line naming the layer, its
    class and place) for anything the rules cannot reproduce, before anything is built."""
    if not isinstance(model, keras.Model):
        raise ParityError(f"expected a Keras model, got {type(model).__name__}")
    taken: set = set()
    inputs, sequence, outputs, results, tensors = _trace(model, taken)
    _flatten_before_dense(sequence, outputs)
    ext = Extraction()
    ext.sequence, ext.results, ext.tensors = sequence, results, tensors
    modules: dict = {}
    nodes = []
    for call, ins, value in sequence:
        out = Emitter(call, modules, taken, python_name)
        RULES[call.kind].emit(call, out)
        if not out.steps:
            out.call_module(out.add_module("nn.Identity"))
        nodes.append(dict(name=value, keras_class=call.kind, keras_path=call.path, inputs=ins, steps=out.steps))
        names = results.get(value, [value])
        if len(names) > 1 or out.outputs:
            if len(out.outputs) != len(names):
                call.fail(f"returns {len(names)} tensors; its rule computes {len(out.outputs) or 1}")
            nodes += [dict(name=name, keras_class=call.kind, keras_path=call.path, inputs=[value], steps=steps)
                      for name, steps in zip(names, out.outputs)]
        ext.calls[id(call.layer)] = call
    ext.graph = dict(format=FORMAT, version=VERSION, name=model.name, class_name=python_name(
        _class_name(model.name), set()), layout=LAYOUT_RULE, inputs=inputs, modules=list(modules.values()),
        nodes=nodes, outputs=outputs, masked_outputs=masked_outputs(model, outputs))
    return ext


def masked_outputs(model, names: list) -> list:
    """The outputs (value names) that carry a Keras mask (Masking or Embedding(mask_zero=True) reaching them
    through pass-through layers): Keras's ``fit`` weights their loss by it, which twin training does not."""
    return [name for name, tensor in zip(names, functional_graph(model).outputs)
            if getattr(tensor, "_keras_mask", None) is not None]


def _class_name(name: str) -> str:
    """A Keras model name as a Python class name: 'resnet50_v2' -> 'Resnet50V2'."""
    words = [w for w in "".join(ch if ch.isalnum() else "_" for ch in name).split("_") if w]
    text = "".join(w[:1].upper() + w[1:] for w in words) or "Model"
    return text if text[0].isalpha() else f"Model{text}"


# --- weights ---------------------------------------------------------------------------------------------------


def _keras_variables(layer) -> dict:
    """{name: variable} of a layer's weights: the variable's name, or, where names repeat (the query/key/value
    kernels of MultiHeadAttention, a Bidirectional's two RNNs), its path inside the layer ("query/kernel")."""
    weights = getattr(layer, "weights", [])  # (a raw keras.ops operation has none)
    names = [w.name for w in weights]
    if len(set(names)) == len(names):
        return dict(zip(names, weights))
    prefix = f"{layer.path}/"
    return {w.path[len(prefix):] if w.path.startswith(prefix) else w.path: w for w in weights}


def _keras_arrays(layer) -> dict:
    return {name: np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float32)
            for name, w in _keras_variables(layer).items()}


def _torch_state(ext: Extraction) -> dict:
    """The twin's full state dict (float32 tensors) from the Keras layers' weights."""
    state = {}
    for call in ext.calls.values():
        for key, array in RULES[call.kind].to_torch(call, _keras_arrays(call.layer)).items():
            array = np.asarray(array)
            dtype = np.float32 if array.dtype.kind == "f" else array.dtype  # (BN's step counter stays int64)
            state[key] = torch.from_numpy(np.array(array, dtype=dtype, order="C"))
    return state


def _load_state(twin, state: dict, where: str) -> None:
    expected = twin.state_dict()
    problems = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state and
                                                     tuple(expected[k].shape) != tuple(state[k].shape)]
    if problems:
        raise ParityError(f"{where}: weights do not fit the twin ({problems[:5]})")
    twin.load_state_dict(state, strict=True)


def _twin_of(keras_model):
    ext = extract_graph(keras_model)
    twin = build_twin(ext.graph)
    _load_state(twin, _torch_state(ext), f"model {keras_model.name!r}")
    return ext, twin.eval()


def convert(keras_model) -> torch.nn.Module:
    """The PyTorch twin of ``keras_model`` (a ``torch.fx.GraphModule`` of stock modules), weights copied, eval mode.

    Inputs/outputs follow ``LAYOUT_RULE``; parameters' ``requires_grad`` follow the Keras layers' ``trainable``.
    """
    ext, twin = _twin_of(keras_model)
    for call in ext.calls.values():
        if not (bool(getattr(call.layer, "trainable", True)) and bool(keras_model.trainable)):
            for attr in call.attrs.values():
                getattr(twin, attr).requires_grad_(False)
    return twin


def copy_weights_to_keras(module: torch.nn.Module, keras_model) -> None:
    """Copy the twin's weights (e.g. after fine-tuning in PyTorch) back into ``keras_model``.

    ``module`` must be ``convert(keras_model)``, ``load_converted`` of its folder or model.py's model. Everything is
    converted and checked before the first assignment: either every weight is copied or none is (ParityError).
    """
    ext = extract_graph(keras_model)
    state = {k: v.detach().cpu().to(torch.float32).numpy() for k, v in module.state_dict().items()}
    expected = {key for call in ext.calls.values()
                for key in RULES[call.kind].to_torch(call, _keras_arrays(call.layer))}
    if set(state) != expected:
        raise ParityError(f"the torch module is not the twin of {keras_model.name!r}: state keys differ "
                          f"({sorted(set(state) ^ expected)[:5]})")
    plan = []
    for call in ext.calls.values():
        arrays = RULES[call.kind].to_keras(call, state)
        variables = _keras_variables(call.layer)
        for key, array in arrays.items():
            if tuple(array.shape) != tuple(variables[key].shape):
                call.fail(f"weight {key}: the twin's converts to {array.shape}, "
                          f"Keras has {tuple(variables[key].shape)}")
            plan.append((variables[key], np.array(array, dtype=variables[key].dtype, order="C")))
    done = []
    try:
        for variable, array in plan:
            previous = np.array(keras.ops.convert_to_numpy(variable))
            variable.assign(array)
            done.append((variable, previous))
    except Exception as error:  # an unusual variable refusing the value: undo, so Keras is never half-updated
        for variable, previous in reversed(done):
            variable.assign(previous)
        raise ParityError(f"copy_weights_to_keras: assigning failed ({error}); the Keras model was restored") from error
    for call in ext.calls.values():
        if hasattr(call.layer, "finalize_state"):  # Normalization derives its mean/variance tensors from weights
            call.layer.finalize_state()


# --- checking and saving ---------------------------------------------------------------------------------------


def _random_inputs(ext: Extraction, n: int, seed: int) -> list:
    """Uniform [0, 1) floats per input; integer ids below the vocabulary size for inputs read by Embeddings (and
    by the ``not_equal(ids, 0)`` that is an Embedding's mask_zero mask)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in ext.graph["inputs"]:
        shape = (n, *[d if d is not None else 8 for d in spec["shape"][1:]])
        readers = [call for call, ins, _ in ext.sequence if spec["name"] in ins]
        embeddings = [call for call in readers if call.kind == "Embedding"]
        if embeddings and all(call.kind in ("Embedding", "keras.ops.not_equal") for call in readers):
            vocab = min(call.layer.input_dim for call in embeddings)
            arrays.append(rng.integers(0, vocab, shape).astype("int32" if "int" in spec["dtype"] else "float32"))
        else:
            arrays.append(rng.random(shape, dtype=np.float32))
    return arrays


def compare(keras_model, twin, inputs: list, reference=None) -> list[dict]:
    """Per output on ``inputs`` (Keras layout): max |Keras - twin|, the largest |Keras output|, the twin's own
    float32 error (max |twin - twin in float64|) and the tolerance ``keras_ref.tolerance`` derives from them.

    ``reference``: the module whose float64 run is the exact answer, when ``twin`` is a rewrite of it that has no
    float64 form of its own (``prepare_for_inference``'s oneDNN copy); by default ``twin`` itself."""
    expected = keras_model(inputs if len(inputs) > 1 else inputs[0], training=False)
    expected = [keras.ops.convert_to_numpy(e) for e in (expected if isinstance(expected, (list, tuple))
                                                         else [expected])]
    twin_inputs = [to_twin_input(x) for x in inputs]
    with torch.no_grad():
        got = twin.eval()(*twin_inputs)
        exact = float64_twin(twin if reference is None else reference)(*float64_inputs(twin_inputs))
    got, exact = ([from_twin_output(g) for g in (out if isinstance(out, tuple) else (out,))] for out in (got, exact))
    report = []
    for name, e, g, x in zip(_output_names(twin), expected, got, exact):
        if e.shape != g.shape:
            raise ParityError(f"output {name!r}: shapes differ (Keras {e.shape}, twin {g.shape} in Keras layout)")
        entry = dict(output=name, max_abs_diff=max_abs(e, g), max_abs_output=float(np.max(np.abs(e))),
                     twin_float32_error=max_abs(g, x))
        report.append(entry | dict(tolerance=tolerance(entry["twin_float32_error"], entry["max_abs_output"])))
    return report


def _output_names(twin) -> list:
    node = next(n for n in twin.graph.nodes if n.op == "output")
    args = node.args[0]
    return [a.name for a in (args if isinstance(args, tuple) else (args,))]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def compile_config_of_file(path) -> dict | None:
    """The compile config stored in a .keras file, read as JSON (nothing deserialized); None if absent."""
    try:
        keras_config_size(Path(path))  # bounded before it is read
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json")).get("compile_config")
    except (ParityError, zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError, AttributeError):
        return None


def check_out(out_dir) -> Path:
    """``out_dir`` as a Path, refused (one line) if it exists and is not a converted model folder to replace."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "graph.json").is_file())):
        raise ConvertedModelError(f"{out} exists and is not a converted model folder; choose another --out")
    return out


def save_converted(keras_model, out_dir, inputs=None, atol: float = ATOL, *, compile_config=None,
                   n: int = 8, seed: int = 0) -> Path:
    """Convert ``keras_model`` and write the twin's folder (see the module docstring); returns its path.

    ``inputs``: real samples in Keras layout (one array, or a list per model input); else ``n`` random ones.
    parity.json records, per output, max |Keras - twin|, the twin's own float32 error and the tolerance; it passes
    under ``keras_ref.tolerance.RULE`` (``atol`` is its floor, relative to max(1, the largest output)). The
    folder is written even when the check fails (``passed: false``) so it can be inspected.
    """
    return _save(keras_model, out_dir, inputs, atol, compile_config, n, seed)[0]


def _save(keras_model, out_dir, inputs, atol, compile_config, n, seed) -> tuple[Path, dict]:
    """save_converted, also returning the parity report it wrote (another writer may since have replaced it)."""
    out = check_out(out_dir)
    started = time.perf_counter()
    ext, twin = _twin_of(keras_model)
    seconds = time.perf_counter() - started
    if inputs is None:
        inputs, source = _random_inputs(ext, n, seed), f"{n} random inputs (seed {seed})"
    else:
        inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        source = f"{len(inputs[0])} given inputs"
    report = compare(keras_model, twin, [np.asarray(x) for x in inputs])
    for r in report:
        r["tolerance"] = tolerance(r["twin_float32_error"], r["max_abs_output"], atol)
    layers = summarize(compare_layers(keras_model, twin, inputs, ext, atol), min(SAMPLES, len(inputs[0])))
    parity = dict(passed=all(within(r, atol) for r in report) and layers["passed"], atol=atol, tolerance_rule=RULE,
                  inputs=source, outputs=report, layers=layers, conversion_seconds=round(seconds, 3),
                  versions=dict(keras=keras.__version__, tensorflow=_tf_version(), torch=torch.__version__,
                                lightning_cnn=lightning_cnn.__version__))
    if compile_config is None and getattr(keras_model, "compiled", False):
        compile_config = keras_model.get_compile_config()
    files = {"graph.json": json.dumps(ext.graph, indent=1), "model.py": model_source(ext.graph).rstrip("\n"),
             "parity.json": json.dumps(parity, indent=1)}
    if compile_config is not None:
        files["compile.json"] = json.dumps(compile_config, indent=1, default=_jsonable)
    _write_folder(out, twin, files)
    return out, parity


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _write_folder(out: Path, twin, files: dict) -> None:
    """Everything goes to a temporary sibling folder, which then takes ``out``'s place in one step: a reader, or
    another conversion into the same ``out`` at the same time, only ever sees a complete folder (the last one to
    arrive stays)."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, tmp / "weights.safetensors")
        for name, text in files.items():
            write_text(tmp / name, text + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- CLI -------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_ref.convert",
        description="Convert a Keras model file (loaded with safe_mode=True: Lambda code is never run) to a "
                    "PyTorch twin folder that lightning_cnn.load_converted reads without TensorFlow. Exit 0 when "
                    "the twin matches Keras within the tolerance (keras_ref.tolerance), 1 when it does not, 2 on "
                    "bad input.")
    parser.add_argument("model", nargs="?", help=".keras or .h5 file")
    parser.add_argument("--out", help="folder to write (replaced if it is a converted folder)")
    parser.add_argument("--supported", action="store_true",
                        help="print the Markdown table of supported Keras layers and keras.ops calls, and exit")
    parser.add_argument("--inputs", help=f".npz with real samples in Keras layout (one array per model input, at "
                        f"most {MAX_SAMPLES} samples and {MAX_INPUT_BYTES >> 30} GiB: all run in one batch)")
    parser.add_argument("--atol", type=float, default=ATOL,
                        help="floor of the tolerance, relative to max(1, largest output); the tolerance is 4x the "
                             "twin's own float32 error (against its float64 run) plus this (keras_ref.tolerance)")
    parser.add_argument("-n", type=int, default=8,
                        help=f"number of random inputs when --inputs is not given (1 to {MAX_SAMPLES})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.supported:
        print(layer_table())
        return 0
    if args.model is None or args.out is None:
        parser.error("MODEL and --out are required (or --supported)")
    check_tolerance("--atol", args.atol)
    check_count("-n", args.n, "random samples")
    check_seed(args.seed)
    check_out(args.out)
    arrays = read_inputs(args.inputs) if args.inputs else None
    try:
        model = load_keras_model(args.model)
    except (FileNotFoundError, ValueError) as error:
        raise ParityError(f"cannot load {args.model}: {error}") from None
    samples = None if arrays is None else model_samples(args.inputs, arrays, input_specs(model))
    out, parity = _save(model, args.out, samples, args.atol, compile_config_of_file(args.model), args.n, args.seed)
    for r in parity["outputs"]:
        print(f"{model.name} output {r['output']}: max |Keras - twin| = {r['max_abs_diff']:.3g}, tolerance "
              f"{r['tolerance']:.3g} (twin's float32 error {r['twin_float32_error']:.3g}, largest |output| "
              f"{r['max_abs_output']:.3g}, atol {args.atol:g}) on {parity['inputs']}")
    layers = parity["layers"]
    for r in layers["failed"]:
        print(f"{model.name} layer {r['keras_path']} ({r['keras_class']}), on Keras's inputs to it: "
              + (f"shapes differ ({r['shape_mismatch']})" if "shape_mismatch" in r else
                 f"max |Keras - twin| = {r['max_abs_diff']:.3g}, tolerance {r['tolerance']:.3g}"))
    worst = layers["worst"]
    print(f"{model.name}: {layers['checked']} layer calls checked each on Keras's inputs to it (first "
          f"{layers['samples']} samples), {layers['n_failed']} over the tolerance"
          + (f"; closest: {worst['keras_path']} at {worst['max_abs_diff'] / worst['tolerance']:.2f}x its tolerance"
             if worst else ""))
    print(f"{'wrote' if parity['passed'] else 'PARITY FAILED; wrote'} {out} "
          f"(converted in {parity['conversion_seconds']:.2f} s)")
    return 0 if parity["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main))
