"""Layer-by-layer parity: every Keras call of a converted graph checked on Keras's own inputs to it.

End to end, a deep random-weight network can be chaotic: float32 rounding in one layer grows through hundreds of
others until the twin's own float32 run is as far from its float64 run as the logits are large (EfficientNetB5,
B7, V2M, V2L), and the end-to-end rule (``keras_ref.tolerance``) then accepts anything. Here each call of the
twin runs on the values Keras computed for its inputs (teacher forcing), so nothing compounds: its output must
match Keras's output of that call under the same rule, the twin's float32 error measured on that call alone
(the same call run in float64 on the same inputs). A wrong padding, epsilon, axis or weight order in any one
layer then shows at that layer, named, however chaotic the rest of the network is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

from .graph import from_twin_output, functional_graph, to_twin_input  # noqa: E402
from .tolerance import ATOL, float64_twin, max_abs, tolerance  # noqa: E402

__all__ = ["keras_values", "compare_layers", "summarize"]


def keras_values(model, inputs: list) -> dict[int, np.ndarray]:
    """id(KerasTensor) -> its value on ``inputs`` (Keras layout), for every tensor of the graph, nested models'
    inner tensors included: the graph run call by call as ``Functional.call`` runs it (inference mode)."""
    values: dict[int, np.ndarray] = {}

    def run(submodel, input_values: list) -> list:
        graph = functional_graph(submodel)
        env = {id(t): v for t, v in zip(graph.inputs, input_values)}
        for tensor, value in zip(graph.inputs, input_values):
            values[id(tensor)] = keras.ops.convert_to_numpy(value)
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if type(op).__name__ == "InputLayer":
                    continue
                if isinstance(op, keras.Model):
                    outs = run(op, [env[id(t)] for t in node.input_tensors])
                else:
                    args, kwargs = node.arguments.fill_in(env)
                    if "training" in getattr(op, "_call_context_args", ()):  # as Functional.call passes it
                        kwargs["training"] = False
                    outs = keras.tree.flatten(op(*args, **kwargs))
                for tensor, value in zip(node.output_tensors, outs):
                    env[id(tensor)] = value
                    values[id(tensor)] = keras.ops.convert_to_numpy(value)
        return [env[id(t)] for t in graph.outputs]

    run(model, [keras.ops.convert_to_tensor(x) for x in inputs])
    return values


class _Forced(fx.Interpreter):
    """Runs the twin's graph, recording each named value it computes, then continuing from Keras's value of it."""

    def __init__(self, module, forced: dict):
        super().__init__(module)
        self.forced, self.got = forced, {}

    def run_node(self, n):
        result = super().run_node(n)
        if n.name in self.forced:
            if n.op != "placeholder":
                self.got[n.name] = result
            return self.forced[n.name]
        return result


SAMPLES = 4  # every intermediate value is held (Keras's, the twin's in float32 and float64): a few samples


def compare_layers(keras_model, twin, inputs: list, ext, atol: float = ATOL, n: int = SAMPLES) -> list[dict]:
    """On the first ``n`` samples of ``inputs``, per value of the twin that is a Keras tensor (each call's result):
    ``keras_class``, ``keras_path``, ``max_abs_diff`` (Keras's value against the twin's call run on Keras's inputs), ``twin_float32_error`` (that
    call in float32 against float64), ``max_abs_output`` and ``tolerance`` (``keras_ref.tolerance``'s rule).

    A value the twin holds in another form than Keras (a Flatten read only by Dense layers flattens channels
    first) is left out, the call after it run on the twin's own value. ``ext``: ``keras_ref.convert``'s
    extraction of ``keras_model`` (which value is which Keras tensor)."""
    values = keras_values(keras_model, [np.asarray(x)[:n] for x in inputs])
    channels_first = {value for call, _, value in ext.sequence if call.flatten_chw}
    where = {node["name"]: (node["keras_class"], node["keras_path"]) for node in ext.graph["nodes"]}
    forced, value_of = {}, {}  # fx node name -> Keras's value (twin layout); fx node name -> graph value
    for value, tensor in ext.tensors.items():
        if value in twin.node_names and value not in channels_first and id(tensor) in values:
            forced[twin.node_names[value]] = to_twin_input(values[id(tensor)])
            value_of[twin.node_names[value]] = value
    twin_inputs = [forced[twin.node_names[spec["name"]]] for spec in ext.graph["inputs"]]
    with torch.no_grad():
        run32 = _Forced(twin.eval(), forced)
        run32.run(*twin_inputs)
        exact = {k: v.double() if v.is_floating_point() else v for k, v in forced.items()}
        run64 = _Forced(float64_twin(twin), exact)
        run64.run(*(x.double() if x.is_floating_point() else x for x in twin_inputs))
    report = []
    for node_name, got in run32.got.items():
        name = value_of[node_name]
        keras_class, keras_path = where[name]
        entry = dict(value=name, keras_class=keras_class, keras_path=keras_path)
        expected = values[id(ext.tensors[name])]
        if not isinstance(got, torch.Tensor):
            report.append(entry | dict(shape_mismatch=f"Keras {expected.shape}, twin a {type(got).__name__}"))
            continue
        got, got64 = from_twin_output(got), from_twin_output(run64.got[node_name])
        if expected.shape != got.shape:
            report.append(entry | dict(shape_mismatch=f"Keras {expected.shape}, twin {got.shape} (Keras layout)"))
            continue
        entry |= dict(max_abs_diff=max_abs(expected, got), max_abs_output=float(np.max(np.abs(expected), initial=0)),
                      twin_float32_error=max_abs(got, got64))
        report.append(entry | dict(tolerance=tolerance(entry["twin_float32_error"], entry["max_abs_output"], atol)))
    return report


def summarize(report: list[dict], samples: int, limit: int = 10) -> dict:
    """parity.json's ``layers``: on how many samples, how many calls were checked, whether all pass, the worst (largest
    diff/tolerance) and the failing ones (at most ``limit``), each named by Keras class and path."""
    failed = [r for r in report if "shape_mismatch" in r or r["max_abs_diff"] > r["tolerance"]]
    ratios = [r for r in report if "shape_mismatch" not in r]
    worst = max(ratios, key=lambda r: r["max_abs_diff"] / r["tolerance"], default=None)
    return dict(samples=samples, checked=len(report), passed=not failed, worst=worst, failed=failed[:limit], n_failed=len(failed))
