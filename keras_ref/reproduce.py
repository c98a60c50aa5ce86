"""The Keras side of one reproduction run (``lightning_cnn.reproduce.worker``): the recipe, tested, with the
test-set probabilities."""

from __future__ import annotations

import math

import numpy as np

from ._tf import load_tensorflow

keras = load_tensorflow()  # the coexistence guard, then TensorFlow: see _tf.py

import tensorflow as tf  # noqa: E402

from lightning_cnn.analysis import history_rows  # noqa: E402
from lightning_cnn.specs import get_spec  # noqa: E402

from . import training  # noqa: E402
from .models import build_model  # noqa: E402


def train_job(job: dict, threads: int) -> dict:
    """Train ``job`` (a ``lightning_cnn.reproduce.jobs.make_job`` dict) with ``threads`` TensorFlow threads."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    spec = get_spec(job["model"])
    arrays = training.prepare_arrays(spec, job["data_dir"], job["allow_partial_test"])
    if job["limit_train_batches"]:  # smoke runs: about the same number of training batches as Lightning's limit
        keep = math.ceil(job["limit_train_batches"] * spec.recipe.batch_size / (1 - spec.recipe.validation_split))
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:keep], arrays["y_train"][:keep]
    model = build_model(spec.id, seed=job["seed"])
    training.compile_model(model, spec)
    history = training.fit_recipe(model, spec, arrays, epochs=job["epochs"], seed=job["seed"], verbose=2)
    scores = training.evaluate(model, arrays)
    probs = model.predict(arrays["x_test"], batch_size=1000, verbose=0)
    return {
        "test_accuracy": scores["test_accuracy"], "test_loss": scores["test_loss"], "n_test": scores["n_test"],
        "test_is_partial": scores["test_is_partial"],
        "history_rows": history_rows(history.history, history.epoch_seconds),
        "probs": np.asarray(probs, dtype=np.float32),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "device": f"{len(tf.config.list_physical_devices('GPU'))} GPU(s) visible to TensorFlow",
    }
