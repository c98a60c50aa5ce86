"""One cross-validation fold in Keras, the counterpart of ``lightning_cnn.crossval.train_fold_lightning``."""

from __future__ import annotations

import dataclasses

from ._tf import load_tensorflow

keras = load_tensorflow()  # the coexistence guard, then TensorFlow: see _tf.py
import numpy as np  # noqa: E402

from lightning_cnn import analysis  # noqa: E402
from lightning_cnn.data import preprocess  # noqa: E402

from . import training  # noqa: E402
from .models import build_model  # noqa: E402


def train_fold_keras(spec, train, val, test, *, epochs=None, seed=0, verbose=2) -> dict:
    """One fold: ``build_model`` + the recipe's compile/fit with ``validation_data`` = the fold; returns what
    ``train_fold_lightning`` returns (history rows, epoch seconds, epochs run, val and test probabilities)."""
    recipe = dataclasses.replace(spec.recipe, validation_split=0.0, train_subset=None, validation_test_head=None)
    cv_spec = dataclasses.replace(spec, recipe=recipe)

    def images(x):
        return np.asarray(preprocess(x, spec.preprocessing), np.float32).reshape((len(x),) + spec.input_shape)

    def labels(y):
        y = analysis.labels_of(y)
        return keras.utils.to_categorical(y, spec.num_classes) if recipe.loss == "categorical_crossentropy" else y

    arrays = {"x_train": images(train[0]), "y_train": labels(train[1]), "x_val": images(val[0]),
              "y_val": labels(val[1])}
    model = build_model(spec.id, seed=seed)
    training.compile_model(model, cv_spec)
    history = training.fit_recipe(model, cv_spec, arrays, epochs=epochs, seed=seed, verbose=verbose)
    rows = analysis.history_rows(history.history, history.epoch_seconds)
    return {"history_rows": rows, "epoch_seconds": [float(s) for s in history.epoch_seconds],
            "epochs_run": len(rows), "val_probs": model.predict(arrays["x_val"], batch_size=1000, verbose=0),
            "test_probs": model.predict(images(test[0]), batch_size=1000, verbose=0)}
