"""A user's Keras model trained as its PyTorch twin: the compile config's optimizer and loss take Keras's steps
(train_step_parity, every supported optimizer x loss), ``python -m keras_ref.parity --inputs/--json/--train-steps``
reports and exits 0/1/2, and ``scripts/train.py --keras-model`` trains a converted functional model with a skip
connection on real MNIST, from a ``.keras`` file and from a converted folder with TensorFlow unimportable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from keras_ref.convert import save_converted
from keras_ref.parity import main as parity_main
from keras_ref.step_parity import train_step_parity
from lightning_cnn.errors import exit_on_user_error

from lightning_cnn.data import load_dataset

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[1]

OPTIMIZERS = {
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.1),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-3, momentum=0.5),
    "adadelta": lambda: keras.optimizers.Adadelta(1.0),
}
LOSSES = {
    "sparse_ce": "sparse_categorical_crossentropy",
    "ce_smoothing": keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
    "ce_logits": keras.losses.CategoricalCrossentropy(from_logits=True),
    "bce": "binary_crossentropy",
    "mse": "mse",
}
# Float32 weights after 3 steps from the same weights on the same 16 real images. Gradients agree to ~1e-8 (float32
# summation order); Adam/RMSprop divide by a running gradient magnitude, which amplifies such a difference near
# g = 0 by up to lr / eps_hat (~300 at Adam's first step): ~3e-6 possible after 3 steps, measured <= 8e-7 on
# models like these. A formula difference (a softmax applied twice, a summed instead of averaged loss, Keras's
# BCE-on-softmax-logits rule ignored, coupled weight decay) moved weights by 1e-3 to 1 when tried.
ATOL_STEPS = 5e-6


def skip_model(final: str = "dense_softmax") -> keras.Model:
    """A small functional MNIST CNN with a residual (Add) block and a Flatten -> Dense head."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    y = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    y = layers.BatchNormalization(name="bn")(y)
    x = layers.Activation("relu", name="relu")(layers.Add(name="residual")([x, y]))
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    if final == "dense_softmax":
        out = layers.Dense(10, activation="softmax", name="probs")(x)
    elif final == "activation_softmax":
        out = layers.Activation("softmax", name="probs")(layers.Dense(10, name="logits")(x))
    else:
        out = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, out, name="skip")


@pytest.fixture(scope="module")
def mnist16():
    _, (x, y) = load_dataset("mnist")  # the data layer's lookup ($LIGHTNING_CNN_DATA in CI)
    return (x[:16, :, :, None] / 255.0).astype(np.float32), y[:16].astype(np.int64)


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_train_steps_match_keras(optimizer_name, loss_name, mnist16):
    keras.utils.set_random_seed(0)
    final = "logits" if loss_name == "ce_logits" else "activation_softmax" if loss_name == "mse" else "dense_softmax"
    model = skip_model(final)
    model.compile(optimizer=OPTIMIZERS[optimizer_name](), loss=LOSSES[loss_name])
    before = [np.array(v) for v in model.trainable_variables]
    x, y = mnist16
    report = train_step_parity(model, x, y, 3, model.get_compile_config())
    moved = max(float(np.abs(np.array(v) - b).max()) for v, b in zip(model.trainable_variables, before))
    assert moved > 100 * ATOL_STEPS, "the weights barely moved: the comparison would prove nothing"
    assert report["max_abs_weight_diff"] <= ATOL_STEPS, report


@pytest.fixture(scope="module")
def skip_file(tmp_path_factory, mnist16):
    keras.utils.set_random_seed(0)
    model = skip_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    folder = tmp_path_factory.mktemp("skip")
    model.save(folder / "skip.keras")
    x, y = mnist16
    np.savez(folder / "mnist16.npz", x=x, y=y)
    save_converted(model, folder / "skip_torch")
    return folder


def test_parity_cli_json_report_with_real_inputs_and_train_steps(skip_file, capsys):
    args = [str(skip_file / "skip.keras"), "--inputs", str(skip_file / "mnist16.npz"), "--train-steps", "2"]
    assert parity_main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # --json alone: stdout is exactly the JSON report
    assert report["passed"] and report["samples"] == 8 and report["max_abs_diff"] <= report["tolerance"]
    assert report["train_steps"]["labels"] == "from --inputs" and report["train_steps"]["passed"]
    assert parity_main(args + ["--json", str(skip_file / "report.json")]) == 0
    assert json.loads((skip_file / "report.json").read_text())["train_steps"]["steps"] == 2
    assert parity_main(args + ["--train-atol", "0"]) == 1  # the weights differ by float32 rounding, not 0


def test_parity_cli_bad_input_exits_2(skip_file, tmp_path, capsys):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 32, 32, 3), np.float32))
    args = [str(skip_file / "skip.keras"), "--inputs", str(tmp_path / "wrong.npz")]
    assert exit_on_user_error(parity_main, args) == 2
    err = capsys.readouterr().err
    assert "(4, 32, 32, 3)" in err and "(N, 28, 28, 1)" in err, err  # the array's shape and the model's
    assert exit_on_user_error(parity_main, [str(tmp_path / "missing.keras")]) == 2


def _train(args, env=None, prefix=()):
    return subprocess.run([sys.executable, *prefix, str(ROOT / "scripts" / "train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


@pytest.mark.long  # a whole MNIST epoch in a process of its own, TensorFlow loaded: minutes on 2 cores
def test_train_py_trains_a_converted_functional_model_one_epoch_on_mnist(skip_file, tmp_path):
    """One epoch over all 60,000 MNIST images with the file's own Adam(3e-3) and sparse CE, as Keras's fit would.
    Bar: test accuracy >= 0.95. Chance is 0.10; a twin whose Flatten order, residual or BN were wrong, or whose
    loss applied softmax twice, stays far below (Keras trains this model to ~0.97 in one epoch)."""
    metrics = tmp_path / "metrics.json"
    result = _train(["--keras-model", str(skip_file / "skip.keras"), "--dataset", "mnist", "--epochs", "1",
                     "--accelerator", "cpu", "--out", str(tmp_path / "run"), "--metrics-json", str(metrics)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(metrics.read_text())
    assert report["epochs_run"] == 1 and report["loss"] == "sparse_categorical_crossentropy"
    assert report["test_samples"] == 10_000 and report["test_accuracy"] >= 0.95, report
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


# As if not installed: `import tensorflow` raises ModuleNotFoundError and importlib.util.find_spec returns None
# (torch._dynamo probes for tensorflow with find_spec, so a finder that raises would break torch itself).
BLOCK_TENSORFLOW = """
import runpy, sys

for name in ("tensorflow", "keras", "tf_keras"):
    sys.modules[name] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_train_py_trains_a_converted_folder_without_tensorflow(skip_file, tmp_path):
    """The folder form in a process where importing tensorflow or keras fails: 200 steps of batch 32 (6,400
    images) must reach >= 0.80 on 2,000 test images (chance 0.10; this model is at ~0.9 there)."""
    script = tmp_path / "blocked.py"
    script.write_text(BLOCK_TENSORFLOW)
    metrics = tmp_path / "metrics.json"
    result = _train(["--keras-model", str(skip_file / "skip_torch"), "--dataset", "mnist", "--epochs", "1",
                     "--limit-train-batches", "200", "--limit-test-batches", "63", "--accelerator", "cpu",
                     "--out", str(tmp_path / "run"), "--metrics-json", str(metrics)], prefix=(str(script),))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(metrics.read_text())
    assert report["test_accuracy"] >= 0.80, report
    blocked = _train(["--keras-model", str(skip_file / "skip.keras"), "--dataset", "mnist"], prefix=(str(script),))
    assert blocked.returncode == 2 and "[keras] extra" in blocked.stderr, blocked.stderr[-2000:]  # the block works


def test_train_py_input_shape_mismatch_names_both_shapes(skip_file):
    result = _train(["--keras-model", str(skip_file / "skip_torch"), "--dataset", "cifar10"])
    assert result.returncode == 2
    assert "(28, 28, 1)" in result.stderr and "(32, 32, 3)" in result.stderr, result.stderr
