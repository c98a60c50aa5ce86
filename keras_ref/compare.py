"""This project's converter side by side with the tools a user would otherwise pick, on the same Keras models.

For each model (``keras.applications``, ``weights=None``, every weight random and each BatchNormalization's moving
statistics set from its real input statistics, then perturbed (``calibrate_batchnorm``), saved as a ``.keras`` file) and the same real CIFAR-10 test images resized:

- ``keras_ref.convert`` (this project): the twin from ``convert()``;
- ``model.py``: the plain PyTorch source the converter writes (imported from its file), with the twin's weights;
- ``prepare_for_inference``: the twin's fast CPU inference copy (``lightning_cnn.converted.prepare_for_inference``:
  oneDNN fused convolutions); inference only, so it does not train;
- tf2onnx + onnx2torch: ``tf2onnx.convert.from_keras`` then ``onnx2torch.convert`` (NHWC in, as Keras);
- Keras 3 on its torch backend: the same ``.keras`` file loaded in a subprocess with ``KERAS_BACKEND=torch``;
- Keras on TensorFlow itself, as the reference and the speed baseline.

Per tool: converts or the error, max |Δ| of the outputs against Keras/TensorFlow, whether one SGD training step
runs (loss finite, some weight changed), and inference images/s at batch 32 (median of ``repeats`` timed calls
after one warm-up; all tools in turn on the same machine). A peer that is not installed is reported as such.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_cnn.atomic import write_text  # noqa: E402

from .convert import convert, to_twin_input  # noqa: E402

BATCH = 32

# name -> (keras.applications builder, keyword arguments); the image size is the caller's (MobileNetV2's 64).
MODELS = {
    "MobileNetV2-0.35": ("MobileNetV2", {"alpha": 0.35}),
    "ResNet50": ("ResNet50", {}),
    "EfficientNetB0": ("EfficientNetB0", {}),
    "VGG16": ("VGG16", {}),
    "DenseNet121": ("DenseNet121", {}),
    "NASNetMobile": ("NASNetMobile", {}),
}
TOOLS = ("keras_ref.convert", "model.py", "prepare_for_inference", "tf2onnx+onnx2torch", "keras-torch-backend")


def build(name: str, size: int, seed: int = 0) -> keras.Model:
    """The model with random weights and non-trivial BN statistics (``randomize``)."""
    builder, kwargs = MODELS[name]
    return randomize(getattr(keras.applications, builder)(weights=None, input_shape=(size, size, 3), **kwargs), seed)


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Every weight random, BN moving statistics away from 0/1 (variances in [0.5, 2], means ~0.3); in place."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.name:
            w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif "mean" in w.name:
            w.assign(rng.normal(0.3, 0.2, shape).astype("float32"))
        elif "int" not in str(w.dtype) and w.name != "count":
            # He-like scale keeps activations finite through 50-100+ layers (unit normal weights overflow)
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            w.assign(rng.normal(0.0, (2.0 / max(fan_in, 1)) ** 0.5, shape).astype("float32"))
    return model


def calibrate_batchnorm(model, x: np.ndarray, seed: int = 0, spread: float = 1.0) -> int:
    """Every BatchNormalization's moving statistics from its real input on ``x``, then perturbed (mean shifted by
    ~0.1 std, variance scaled by 0.8-1.25), gamma U(0.8, 1.2), beta N(0, 0.1): no BN is an identity and, unlike
    arbitrary random statistics, activations stay in the range the network sees on real data.

    The inputs are read with the model in training mode (each BN normalizes by its batch statistics), which is what
    every BN sees once the ones before it are calibrated. ``spread`` scales the perturbation (deep networks with
    squeeze-excite gates compound it: EfficientNet's logits reach 1e5 at 1.0, ~10 at 0.2). Returns the number of
    BN layers set.
    """
    rng = np.random.default_rng(seed)
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    probe = keras.Model(model.inputs, [bn.input for bn in bns])
    features = probe(x, training=True)
    for bn, f in zip(bns, features if isinstance(features, (list, tuple)) else [features]):
        f = np.asarray(f)
        axis = bn.axis % f.ndim if isinstance(bn.axis, int) else bn.axis[0] % f.ndim
        axes = tuple(a for a in range(f.ndim) if a != axis)
        mean, var = f.mean(axes), f.var(axes)
        bn.moving_mean.assign((mean + 0.1 * spread * np.sqrt(var) * rng.normal(size=mean.shape)).astype("float32"))
        bn.moving_variance.assign((var * rng.uniform(1 - 0.2 * spread, 1 + 0.25 * spread, var.shape)).astype(
            "float32"))
        if bn.gamma is not None:
            bn.gamma.assign(rng.uniform(0.8, 1.2, bn.gamma.shape).astype("float32"))
        if bn.beta is not None:
            bn.beta.assign(rng.normal(0, 0.1, bn.beta.shape).astype("float32"))
    return len(bns)


def real_images(size: int, data_dir=None, n: int = BATCH) -> np.ndarray:
    """The first n CIFAR-10 test images, resized (bilinear) to size x size, scaled to [0, 1], NHWC float32."""
    import tensorflow as tf

    from lightning_cnn.data import load_dataset

    _, (x, _) = load_dataset("cifar10", data_dir, allow_partial_test=True)
    x = tf.image.resize(x[:n].astype("float32") / 255.0, (size, size)).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _error(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}"


def _interleaved(calls: dict, n: int, repeats: int) -> dict:
    """{tool: (median images/s, median over rounds of its ratio to "keras")}: every call once per round, back to
    back, after one warm-up each (a shared machine's speed drifts: only calls made back to back are compared)."""
    for call in calls.values():
        call()
    rounds = []
    for _ in range(repeats):
        seconds = {}
        for tool, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[tool] = time.perf_counter() - started
        rounds.append(seconds)
    return {tool: (round(n / statistics.median(r[tool] for r in rounds), 1),
                   statistics.median(r["keras"] / r[tool] for r in rounds)) for tool in calls}


def _torch_train_step(module: torch.nn.Module, x: torch.Tensor) -> str:
    """One SGD step on cross-entropy against fixed labels: "yes" if the loss is finite and a weight moved."""
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return "no (no trainable parameters)"
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1e-3)
    out = module(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    loss = torch.nn.functional.cross_entropy(out.reshape(len(x), -1), torch.arange(len(x)) % out.shape[-1])
    loss.backward()
    optimizer.step()
    module.eval()
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, params))
    loss = float(loss.detach())
    return "yes" if np.isfinite(loss) and moved else f"no (loss {loss:.3g}, weights moved: {moved})"


def _torch_call(module, x_in):
    with torch.inference_mode():
        module(x_in)


def _run_torch_tool(tool, make, x_in, reference, timed: dict, trains: bool = True) -> dict:
    """Converts, checks and (``trains``) trains one step; the inference call is added to ``timed`` for the
    interleaved timing (``_interleaved``)."""
    result = {"converts": "no"}
    try:
        started = time.perf_counter()
        module = make()
        result.update(converts="yes", convert_seconds=round(time.perf_counter() - started, 2))
    except Exception as exc:  # noqa: BLE001  (the tool's own failure is the finding)
        result["error"] = _error(exc)
        return result
    module.eval()
    try:
        with torch.inference_mode():
            out = module(x_in)
        out = out[0] if isinstance(out, (tuple, list)) else out
        result["max_abs_diff"] = float(np.abs(out.numpy().reshape(reference.shape) - reference).max())
        timed[tool] = lambda: _torch_call(module, x_in)
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"runs: {_error(exc)}"
    if not trains:
        result["trains_one_step"] = "n/a (inference copy)"
        return result
    try:
        result["trains_one_step"] = _torch_train_step(module, x_in.clone())
    except Exception as exc:  # noqa: BLE001
        result["trains_one_step"] = f"no ({_error(exc)})"
    return result


def model_py(keras_model, twin) -> torch.nn.Module:
    """The converted folder's model.py for ``keras_model`` (the converter's source, imported from its file) with
    the twin's weights (``strict=True``)."""
    import importlib.util

    from lightning_cnn.converted.source import model_source

    from .convert import extract_graph

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.py"
        path.write_text(model_source(extract_graph(keras_model).graph))
        spec = importlib.util.spec_from_file_location("converted_model_py", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    # the model class is written last, after any helper classes (source.model_source)
    cls = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__][-1]
    source = cls()
    source.load_state_dict(twin.state_dict(), strict=True)
    return source.eval()


def _tf2onnx_module(model, size):
    import onnx2torch
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    return onnx2torch.convert(onnx_model)


_TORCH_BACKEND_CHILD = r"""
import json, statistics, sys, time
import numpy as np
import keras, torch
path, x_path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = {"converts": "no"}
try:
    started = time.perf_counter()
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    result.update(converts="yes", convert_seconds=round(time.perf_counter() - started, 2))
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}"
    print(json.dumps(result)); sys.exit(0)
x = np.load(x_path)
out = model.predict_on_batch(x)
np.save(x_path + ".out.npy", np.asarray(out))
times = []
for _ in range(repeats + 1):
    started = time.perf_counter(); model.predict_on_batch(x); times.append(time.perf_counter() - started)
result["images_per_s"] = round(len(x) / statistics.median(times[1:]), 1)
try:
    before = [np.array(w) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, np.arange(len(x)) % out.shape[-1])
    moved = any(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.trainable_weights))
    result["trains_one_step"] = "yes" if np.isfinite(loss) and moved else f"no (loss {loss}, moved {moved})"
except Exception as exc:
    result["trains_one_step"] = f"no ({type(exc).__name__})"
print(json.dumps(result))
"""


def _keras_torch_backend(path: Path, x: np.ndarray, reference: np.ndarray, repeats: int, timeout: int) -> dict:
    x_path = path.with_suffix(".x.npy")
    np.save(x_path, x)
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        done = subprocess.run([sys.executable, "-c", _TORCH_BACKEND_CHILD, str(path), str(x_path), str(repeats)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"converts": "no", "error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
        return {"converts": "no", "error": f"exit {done.returncode}: {tail[0][:200] if tail else ''}"}
    result = json.loads(lines[-1])
    out_path = Path(str(x_path) + ".out.npy")
    if out_path.is_file():
        result["max_abs_diff"] = float(np.abs(np.load(out_path).reshape(reference.shape) - reference).max())
    return result


def compare_model(name: str, size: int, data_dir=None, repeats: int = 3, timeout: int = 600,
                  tools=TOOLS) -> dict:
    """Every tool on one model; see the module docstring. Never raises for a tool's failure."""
    model = build(name, size)
    x = real_images(size, data_dir)
    calibrate_batchnorm(model, x[:16])
    reference = np.asarray(model(x, training=False))
    row = {"model": name, "input": f"{size}x{size}x3", "parameters": int(model.count_params()),
           "max_abs_output": float(np.abs(reference).max()), "keras_tensorflow": {}}
    timed = {"keras": lambda: model.predict_on_batch(x)}
    xt = to_twin_input(x)
    if "keras_ref.convert" in tools:
        row["keras_ref.convert"] = _run_torch_tool("keras_ref.convert", lambda: convert(model), xt, reference, timed)
    if "model.py" in tools:
        row["model.py"] = _run_torch_tool("model.py", lambda: model_py(model, convert(model)), xt, reference, timed)
    if "prepare_for_inference" in tools:
        from lightning_cnn.converted import prepare_for_inference

        row["prepare_for_inference"] = _run_torch_tool("prepare_for_inference",
                                                       lambda: prepare_for_inference(convert(model)), xt, reference,
                                                       timed, trains=False)
    if "tf2onnx+onnx2torch" in tools:
        missing = [m for m in ("tf2onnx", "onnx2torch", "onnx") if importlib.util.find_spec(m) is None]
        row["tf2onnx+onnx2torch"] = ({"converts": "not installed", "error": f"{', '.join(missing)} not installed "
                                     "(pip install -e '.[compare]')"} if missing else
                                    _run_torch_tool("tf2onnx+onnx2torch", lambda: _tf2onnx_module(model, size),
                                                    torch.from_numpy(x), reference, timed))
    for tool, (images_per_s, vs_keras) in _interleaved(timed, len(x), repeats).items():
        target = row["keras_tensorflow"] if tool == "keras" else row[tool]
        target.update(images_per_s=images_per_s, vs_keras=round(vs_keras, 2))
    if "keras-torch-backend" in tools:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.keras"
            model.save(path)
            row["keras-torch-backend"] = _keras_torch_backend(path, x, reference, repeats, timeout)
    return row


def _cell(result: dict | None) -> list[str]:
    if not result:
        return ["—"] * 5
    converts = result.get("converts", "no")
    if converts != "yes":
        return [f"{converts}: {result.get('error', '')}".replace("|", "/"), "—", "—", "—", "—"]
    diff = f"{result['max_abs_diff']:.2g}" if "max_abs_diff" in result else result.get("error", "—")
    return [f"yes ({result.get('convert_seconds', 0):.1f} s)", diff, result.get("trains_one_step", "—"),
            f"{result['images_per_s']:.0f}" if "images_per_s" in result else "—",
            f"{result['vs_keras']:.2f}×" if "vs_keras" in result else "—"]


def render(rows: list[dict], meta: dict) -> str:
    lines = ["# Keras -> PyTorch converters side by side", "",
             f"Measured {meta['date']} on {meta['machine']} ({meta['threads']} torch threads); "
             f"{meta['versions']}. Command: `{meta['command']}`.", "",
             "Each model: `keras.applications`, `weights=None`, random weights, each BatchNormalization's moving "
             "statistics set from its real input statistics then perturbed (random statistics make deep nets "
             "chaotic, which hides errors); inputs: the first 32 real CIFAR-10 test images, resized (bilinear), in [0, 1]. "
             "max |Δ|: largest absolute difference of the 1000 softmax outputs from Keras on TensorFlow (same "
             "file, same images). Trains: one SGD step on cross-entropy runs, the loss is finite and a weight "
             "changes. img/s: inference at batch 32 on this CPU; Keras on TensorFlow (`predict_on_batch`) and the "
             "in-process torch tools are called in turn, once per round, after a warm-up each; img/s is the median "
             "over rounds and × Keras the median of the rounds' ratios (a shared VM's speed drifts: only calls made "
             "back to back are compared). keras-torch-backend runs in its own process after them, so its ratio "
             "is to the Keras figure of that row, not interleaved.", "",
             "| model | input | tool | converts | max abs Δ | trains one step | img/s | × Keras | Keras-TF img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for tool in TOOLS:
            if tool in row:
                keras_ips = row["keras_tensorflow"].get("images_per_s", 0.0)
                result = row[tool]
                if tool == "keras-torch-backend" and result.get("images_per_s") and keras_ips:
                    result = {**result, "vs_keras": result["images_per_s"] / keras_ips}
                lines.append("| " + " | ".join([row["model"], row["input"], tool, *_cell(result),
                                                f"{keras_ips:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def run(models, size: int, out_dir: str | Path = "reports", data_dir=None, repeats: int = 3, tools=TOOLS,
        command: str = "") -> list[dict]:
    """Compare every model, writing ``converters.md`` and ``converters.json`` under ``out_dir`` after each one."""
    import tensorflow as tf

    rows = []
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
            "threads": torch.get_num_threads(), "command": command,
            "versions": f"keras {keras.__version__}, tensorflow {tf.__version__}, torch {torch.__version__}"
                        + "".join(f", {m} {_version(m)}" for m in ("tf2onnx", "onnx2torch", "onnx"))}
    for name in models:
        model_size = 64 if name == "MobileNetV2-0.35" else size
        try:
            rows.append(compare_model(name, model_size, data_dir, repeats, tools=tools))
        except Exception as exc:  # noqa: BLE001  (a model that cannot even be built is reported, not fatal)
            traceback.print_exc()
            rows.append({"model": name, "input": f"{model_size}x{model_size}x3", "error": _error(exc),
                         "keras_tensorflow": {"images_per_s": 0.0}})
        out = Path(out_dir)
        write_text(out / "converters.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        write_text(out / "converters.md", render(rows, meta))
        print(f"{name}: done", flush=True)
    return rows


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"
