"""End to end, as a user would: a Keras model converted with ``python -m keras_ref.convert``, then trained on the
user's own data with ``lightning-cnn-train --keras-model DIR --data PATH`` (``python -m lightning_cnn.cli.train``).

1. A small functional CNN with a residual block and its own Rescaling(1/255) layer, on a folder of real CIFAR-10
   PNGs (``train/<class>/``, ``test/<class>/``) written here: the loader must feed it raw 0..255 pixels.
   Then ``lightning-cnn-predict`` answers for those PNGs from the run's checkpoint, as the run's test did.
2. A Conv1D + LSTM sequence model on an ``.npz`` of real MNIST digits read as 28 rows of 28 pixels (uint8: the
   loader scales them by 1/255).
TensorFlow runs only in the subprocesses that build and convert the Keras models; training runs without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_cnn.data import load_dataset

pytestmark = pytest.mark.keras
REPO = Path(__file__).resolve().parents[1]
# One compute thread per training process: on this shared 2-core machine two OpenMP threads competing with other
# processes made a step of these small models 30x slower (measured 500-800 ms vs 17 ms at batch 32).
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

_BUILD = """
import sys
import keras_ref
keras = keras_ref.load_tensorflow()
from keras import layers
keras.utils.set_random_seed(0)
image = keras.Input((32, 32, 3), name="image")
x = layers.Rescaling(1 / 255, name="scale")(image)
x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(x)
y = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(x)
y = layers.Conv2D(16, 3, padding="same", name="conv_b")(y)
x = layers.Activation("relu", name="relu")(layers.Add(name="residual")([x, y]))
x = layers.Flatten(name="flatten")(layers.MaxPooling2D(name="pool")(x))
cnn = keras.Model(image, layers.Dense(10, activation="softmax", name="probs")(x), name="residual_cnn")
cnn.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
cnn.save(sys.argv[1] + "/residual_cnn.keras")
rows = keras.Input((28, 28), name="rows")
x = layers.LSTM(32, name="lstm")(layers.Conv1D(32, 3, padding="same", activation="relu", name="conv")(rows))
lstm = keras.Model(rows, layers.Dense(10, activation="softmax", name="probs")(x), name="rows_lstm")
lstm.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
lstm.save(sys.argv[1] + "/rows_lstm.keras")
"""


def run(*argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=ENV)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    if importlib.util.find_spec("tensorflow") is None:  # looked up, not imported: TF and triton in one process crash
        pytest.skip("building and converting the Keras models needs the [keras] extra")
    root = tmp_path_factory.mktemp("keras_models")
    built = run("-c", _BUILD, root)
    assert built.returncode == 0, built.stderr[-3000:]
    for name in ("residual_cnn", "rows_lstm"):
        done = run("-m", "keras_ref.convert", root / f"{name}.keras", "--out", root / name)
        assert done.returncode == 0, done.stderr[-3000:]  # 0: the twin matches Keras within its tolerance
    return root


def chance_bound(labels: np.ndarray) -> float:
    """What no model that ignores its input beats: the largest class share, plus 5 standard deviations of a
    random guesser's accuracy on len(labels) samples (binomial, p = 1/10)."""
    return np.bincount(labels).max() / len(labels) + 5 * math.sqrt(0.1 * 0.9 / len(labels))


def train(keras_model: Path, data: Path, out: Path, *extra) -> tuple[dict, str]:
    done = run("-m", "lightning_cnn.cli.train", "--keras-model", keras_model, "--data", data, "--epochs", 2,
               "--accelerator", "cpu", "--seed", 0, "--out", out / "run", "--metrics-json", out / "metrics.json",
               *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), done.stdout + done.stderr


def test_residual_cnn_trains_on_a_folder_of_cifar10_pngs(converted, data_dir, tmp_path):
    (x, y), (x_test, y_test) = load_dataset("cifar10", data_dir, download=False, allow_partial_test=True)
    x, y, x_test, y_test = x[:2000], y[:2000, 0], x_test[:500], y_test[:500, 0]
    for split, images, labels in (("train", x, y), ("test", x_test, y_test)):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "photos" / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    metrics, log = train(converted / "residual_cnn", tmp_path / "photos", tmp_path, "--workers", 1)
    assert "pixels 0..255 (the model rescales them itself" in log  # its Rescaling(1/255) layer does it
    assert metrics["epochs_run"] == 2 and metrics["test_split"] == "test" and metrics["test_samples"] == 500
    # 10 classes, 500 test images: the bound is 0.11 (largest class share) + 5 sd (0.067) = 0.18; measured 0.32.
    bound = chance_bound(y_test)
    assert bound < 0.2 < metrics["test_accuracy"], (bound, metrics["test_accuracy"])

    # lightning-cnn-predict on the test PNGs, from the final checkpoint (the model that was tested): the twin rebuilt
    # from its folder, the images fed raw as in training, answers named by the class folders.
    files = sorted((tmp_path / "photos" / "test").glob("*/*.png"))
    done = run("-m", "lightning_cnn.cli.predict", "--checkpoint", tmp_path / "run" / "checkpoints" / "last.ckpt",
               *files, "--json", tmp_path / "predictions.json")
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "predictions.json").read_text())
    truth = [f.parent.name for f in files]
    assert {r["predicted"] for r in records} <= set(truth)
    accuracy = np.mean([r["predicted"] == t for r, t in zip(records, truth)])
    # The same 500 images and network as the run's test: only float32 near-ties may flip (the copy sums in another
    # order), so at most 2 of 500 answers differ; fed x/255 instead of raw pixels, the accuracy falls to chance.
    assert abs(accuracy - metrics["test_accuracy"]) <= 2 / 500, (accuracy, metrics["test_accuracy"])


def test_lstm_trains_on_an_npz_of_mnist_rows(converted, data_dir, tmp_path):
    (x, y), (x_test, y_test) = load_dataset("mnist", data_dir, download=False)
    np.savez(tmp_path / "rows.npz", x_train=x[:2000], y_train=y[:2000], x_test=x_test[:1000],
             y_test=y_test[:1000])  # uint8 (N, 28, 28): 28 steps of 28 features, Keras layout kept
    metrics, log = train(converted / "rows_lstm", tmp_path / "rows.npz", tmp_path)
    assert "2,000 train / 1,000 test samples, 10 classes" in log
    # 1,000 test digits: bound 0.126 + 5 sd (0.047) = 0.17; 0.5 is far beyond it (measured 0.75)
    assert chance_bound(y_test[:1000]) < 0.5 < metrics["test_accuracy"], metrics["test_accuracy"]
