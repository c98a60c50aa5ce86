"""model.py, the converted model as plain PyTorch source: it runs where TensorFlow, Keras *and lightning_cnn* are
unimportable, matches Keras, exports with ``torch.export``, compiles with ``torch.compile``, and trains.

Each model is converted once (``save_converted``); a child process, in which a ``sys.meta_path`` finder refuses
``tensorflow``, ``keras``, ``lightning_cnn`` and ``keras_ref``, imports the folder's model.py by path, loads its
weights (``strict=True``), and runs the checks. Tolerance, as for the twin (keras_ref.tolerance): max |Keras -
model.py| <= 4 x model.py's own float32 error (against the same model.py run in float64, in the child) + 1e-6 x
max(1, the largest |Keras output|): float32 kernels of the two frameworks sum in different orders, and deep
networks accumulate more of that rounding; a layout, padding or weight-order mistake moves the float32 and float64
runs alike, so it is not covered by the rounding term. ``torch.export``'s program runs the
same kernels as eager: it must match model.py within 1e-6 relative. Deep networks' BatchNormalization statistics are set from each layer's
real input statistics (CIFAR-10 images), then perturbed, so no BN is an identity and no activation explodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from keras_ref.convert import from_twin_output, save_converted
from keras_ref.tolerance import max_abs, within

from .conftest import calibrate_batchnorm
from .test_convert_applications import application, cifar_images, resnet_block
from .test_convert_layers import images, randomize, rows
from .test_load_converted import small_model

pytestmark = pytest.mark.keras

RTOL = 1e-5  # torch.compile vs eager model.py (slow test): fused kernels reorder float32 sums, ~1e-7 relative
EXPORT_RTOL = 1e-6  # torch.export vs eager model.py: the same kernels, so only op-fusion rounding differs
ROOT = Path(__file__).resolve().parents[1]
ALLOWED_IMPORTS = {"import math", "from pathlib import Path", "import torch", "import torch.nn.functional as F",
                   "from torch import nn", "from safetensors.torch import load_file"}

# The child: no TensorFlow, Keras or lightning_cnn; model.py imported from its file; the checks named in argv.
CHILD = textwrap.dedent("""
    import importlib.machinery, importlib.util, json, sys

    class Refuse:
        # Finds the blocked packages first, with a loader that refuses them: import raises ImportError, and
        # probing (torch._dynamo looks third-party packages up to skip them) sees a spec without a file.

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "lightning_cnn", "keras_ref"):
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            raise ImportError(f"{spec.name} is blocked in this test")

        def exec_module(self, module):
            raise ImportError(f"{module.__name__} is blocked in this test")

    sys.meta_path.insert(0, Refuse())
    import numpy as np
    import torch

    folder, inputs_path, out_path, checks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    spec = importlib.util.spec_from_file_location("converted_model", f"{folder}/model.py")
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    model = source.load(folder)  # strict=True: the file's keys are exactly the class's state_dict
    with np.load(inputs_path) as npz:
        inputs = tuple(torch.from_numpy(npz[f"arr_{i}"]) for i in range(len(npz.files)))
    outputs = {}
    report = {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}

    def keep(label, out):
        for i, o in enumerate(out if isinstance(out, tuple) else (out,)):
            outputs[f"{label}_{i}"] = o.detach().numpy()

    with torch.no_grad():
        keep("eager", model(*inputs))
        if "exact" in checks:  # the same model in float64: a stand-in for exact arithmetic
            import copy
            keep("exact", copy.deepcopy(model).double()(*(t.double() if t.is_floating_point() else t
                                                          for t in inputs)))
    if "export" in checks:
        program = torch.export.export(model, inputs)
        with torch.no_grad():
            keep("export", program.module()(*inputs))
    if "compile" in checks:
        with torch.no_grad():
            keep("compile", torch.compile(model)(*inputs))
    if "train" in checks:
        model.train()
        out = model(*inputs)
        loss = sum((o.float() ** 2).mean() for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        report["trainable"] = len(trainable)
        report["without_gradient"] = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
        report["nonzero_gradients"] = sum(int(p.grad.abs().sum() > 0) for _, p in trainable if p.grad is not None)
    report["blocked_modules_imported"] = sorted({m.split(".")[0] for m in sys.modules} &
                                                {"tensorflow", "keras", "lightning_cnn", "keras_ref"})
    np.savez(out_path, **outputs)
    print(json.dumps(report))
""")


def sequence_model():
    """Token ids -> Embedding -> LSTM (sequences) -> GRU -> Dense, with a Conv1D branch merged in."""
    ids = keras.Input((7,), dtype="int32", name="tokens")
    x = layers.Embedding(50, 6, name="embed")(ids)
    a = layers.LSTM(5, return_sequences=True, name="lstm")(x)
    b = layers.Conv1D(5, 3, padding="same", activation="relu", name="conv")(x)
    x = layers.Add(name="merge")([a, b])
    x = layers.GRU(4, name="gru")(x)
    return keras.Model(ids, layers.Dense(3, name="logits")(x), name="sequence_model")


def deep(name: str, size: int):
    """A keras.applications model fed the input range it is built for: EfficientNet rescales raw 0-255 pixels
    itself, the others take [-1, 1] (on [-1, 1] EfficientNet's activations collapse to ~1e-4 and BN's epsilon
    decides everything)."""
    def images_for_it(n=4):
        x = cifar_images(size, n)
        return (x + 1.0) * 127.5 if name.startswith("EfficientNet") else x

    def build():
        model = application(name, size)
        calibrate_batchnorm(model, images_for_it(16))
        return model
    return build, images_for_it


# name -> (model builder, inputs builder, child checks); the small ones run by default, the large ones are slow.
MODELS = {
    "small_residual": (lambda: randomize(small_model()), images, "export,train"),
    "sequence": (lambda: randomize(sequence_model()), lambda: (rows()[:, :, 0] * 49).round().astype("int32"),
                 "export,train"),
    "resnet_block": (lambda: _calibrated(resnet_block(), 32), lambda: cifar_images(32), "export,train,exact"),
    "MobileNetV2": (*deep("MobileNetV2", 32), "export,train,exact"),
    **{name: (*deep(name, 64), "export,train,exact") for name in ("ResNet50", "EfficientNetB0", "VGG16", "DenseNet121",
                                                           "NASNetMobile")},
}
DEFAULT = ("small_residual", "sequence", "resnet_block", "MobileNetV2")


def _calibrated(model, size):
    calibrate_batchnorm(model, cifar_images(size, 16))
    return model


@pytest.fixture(scope="module", params=[pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow)
                                        for n in MODELS])
def converted(request, tmp_path_factory):
    """(name, Keras outputs, child report, child outputs) for one model, converted and checked in a child."""
    name = request.param
    build, make_inputs, checks = MODELS[name]
    keras.utils.set_random_seed(0)
    model = build()
    x = make_inputs()
    folder = save_converted(model, tmp_path_factory.mktemp(name) / "converted", x)
    expected = model(x, training=False)
    expected = [np.asarray(e) for e in (expected if isinstance(expected, (list, tuple)) else [expected])]
    report, outputs = run_child(folder, x, checks if "exact" in checks else f"{checks},exact")
    return name, expected, report, outputs, folder


def test_model_py_runs_without_tensorflow_keras_or_lightning_cnn_and_matches_keras(converted):
    name, expected, report, outputs, folder = converted
    assert report["blocked_modules_imported"] == []
    imports = {line.strip() for line in (folder / "model.py").read_text().splitlines()
               if line.strip().startswith(("import ", "from "))}
    assert imports <= ALLOWED_IMPORTS, imports - ALLOWED_IMPORTS
    for i, e in enumerate(expected):
        got = from_twin_output_array(outputs[f"eager_{i}"])
        assert got.shape == e.shape
        assert np.abs(e).max() > 1e-3, "outputs are ~0: the comparison would prove nothing"
        exact = from_twin_output_array(outputs[f"exact_{i}"])  # model.py in float64 (module docstring)
        report = dict(max_abs_diff=max_abs(got, e), max_abs_output=float(np.abs(e).max()),
                      twin_float32_error=max_abs(got, exact))
        print(f"{name} output {i}: max |Keras - model.py| = {report['max_abs_diff']:.3g}, model.py's float32 error "
              f"{report['twin_float32_error']:.3g}, Keras's {max_abs(e, exact):.3g} (largest |output| "
              f"{report['max_abs_output']:.3g})")
        assert within(report)


def test_torch_export_succeeds_and_matches(converted):
    name, expected, report, outputs, _ = converted
    for i in range(len(expected)):
        eager, exported = outputs[f"eager_{i}"], outputs[f"export_{i}"]
        assert np.abs(eager - exported).max() <= EXPORT_RTOL * np.abs(eager).max()


def test_one_training_step_reaches_every_trainable_parameter(converted):
    name, _, report, _, _ = converted
    assert report["trainable"] > 0 and report["without_gradient"] == []
    assert report["nonzero_gradients"] >= report["trainable"] // 2  # not a graph that cut the gradient


def run_child(folder: Path, x: np.ndarray, checks: str) -> tuple[dict, dict]:
    """(report, outputs) of CHILD on ``folder``'s model.py with ``x`` (Keras layout)."""
    work = folder.parent
    np.savez(work / "inputs.npz", np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))
    env = dict(os.environ, PYTHONPATH="")  # nothing of this checkout is importable but model.py itself
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(work / "inputs.npz"),
                             str(work / "outputs.npz"), checks], capture_output=True, text=True, env=env,
                            timeout=900, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(work / "outputs.npz") as npz:
        return json.loads(result.stdout.strip().splitlines()[-1]), {k: npz[k] for k in npz.files}


@pytest.mark.slow  # inductor compiles C++ for each kernel: ~1 min on 2 loaded cores even for this model
def test_torch_compile_runs(tmp_path):
    """torch.compile (inductor, CPU) of the small residual model gives model.py's outputs."""
    keras.utils.set_random_seed(0)
    model, x = randomize(small_model()), images()
    report, outputs = run_child(save_converted(model, tmp_path / "converted", x), x, "compile")
    assert np.abs(outputs["compile_0"] - outputs["eager_0"]).max() <= RTOL * np.abs(outputs["eager_0"]).max()


def from_twin_output_array(array: np.ndarray) -> np.ndarray:
    import torch

    return from_twin_output(torch.from_numpy(array))
