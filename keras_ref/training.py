"""The documented recipes in Keras: optimizer, ``compile``, the arrays the documents fed to ``fit``, ``evaluate``.

Everything here follows ``lightning_cnn.specs`` (one recipe table for both frameworks) and plain Keras semantics:
``validation_split`` is handed to ``model.fit`` untouched (Keras takes the *last* fraction of the arrays, before
shuffling), ``EarlyStopping`` uses Keras's default monitor ``val_loss``, labels are one-hot only where the
document's loss is ``categorical_crossentropy``.
"""

from __future__ import annotations

import time

from ._tf import load_tensorflow

keras = load_tensorflow()  # the guard, then TensorFlow: see _tf.py

import numpy as np  # noqa: E402

from lightning_cnn.data import DataError, load_dataset, preprocess  # noqa: E402
from lightning_cnn.specs import ModelSpec, Recipe, optimizer_settings  # noqa: E402

__all__ = ["make_optimizer", "compile_model", "prepare_arrays", "recipe_callbacks", "fit_recipe", "evaluate",
           "EpochTimer", "FULL_TEST_SIZE", "DataError"]

FULL_TEST_SIZE = {"mnist": 10_000, "cifar10": 10_000}

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,  # learning_rate, beta_1, beta_2, epsilon
    "sgd": keras.optimizers.SGD,  # learning_rate, momentum
    "rmsprop": keras.optimizers.RMSprop,  # learning_rate, rho, momentum, epsilon
    "adadelta": keras.optimizers.Adadelta,  # learning_rate, rho, epsilon
}


def make_optimizer(recipe: Recipe) -> keras.optimizers.Optimizer:
    """A fresh Keras optimizer with every hyper-parameter of the recipe spelt out (Keras 3 defaults filled in).

    ``mnist_cnn_dropout``'s Adadelta gets learning_rate=1.0: the document ran Keras 2, whose default that was.
    """
    try:
        cls = _OPTIMIZERS[recipe.optimizer]
    except KeyError:
        raise ValueError(f"unsupported optimizer {recipe.optimizer!r}; known: {', '.join(_OPTIMIZERS)}") from None
    return cls(**optimizer_settings(recipe))


def compile_model(model: keras.Model, spec: ModelSpec, steps_per_execution: int = 1) -> keras.Model:
    """``model.compile`` as the document did: its optimizer and loss, ``metrics=['accuracy']``."""
    if spec.recipe.loss not in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        raise ValueError(f"unsupported loss {spec.recipe.loss!r}")
    model.compile(optimizer=make_optimizer(spec.recipe), loss=spec.recipe.loss, metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    return model


def _labels(y: np.ndarray, spec: ModelSpec) -> np.ndarray:
    if spec.recipe.loss == "categorical_crossentropy":
        return keras.utils.to_categorical(y, spec.num_classes)  # float32 one-hot, as the documents did
    return np.array(y)  # integer class ids, as load_data() returns them (a writable copy: the cache is read-only)


def _load(spec: ModelSpec, data_dir, allow_partial_test, download):
    if allow_partial_test is not None or spec.dataset != "cifar10":
        return load_dataset(spec.dataset, data_dir, download=download, allow_partial_test=bool(allow_partial_test))
    # cifar10, caller did not say: the full test set if there is one, else a partial one (recorded by the caller).
    try:
        return load_dataset(spec.dataset, data_dir, download=download, allow_partial_test=False)
    except DataError:
        return load_dataset(spec.dataset, data_dir, download=download, allow_partial_test=True)


def prepare_arrays(spec: ModelSpec, data_dir=None, allow_partial_test: bool | None = None, *,
                   download: bool = True) -> dict:
    """The arrays the document passed to ``fit``/``evaluate``, through the project's data layer.

    Returns a dict: ``x_train, y_train`` (after ``train_subset``), ``x_val, y_val`` (the first
    ``validation_test_head`` test images, else None; ``validation_split`` is left to ``fit``), ``x_test, y_test``
    (the whole test set the data layer gave), ``test_is_partial`` (fewer than the official 10,000 test images) and
    ``n_test``. Images are float32 NHWC shaped ``(N,) + spec.input_shape`` (MNIST becomes (N,28,28,1)),
    preprocessed per ``spec.preprocessing``; labels are one-hot for categorical cross-entropy, ints otherwise.

    ``allow_partial_test``: None lets a CIFAR-10 test set shorter than 10,000 through only when no full one is
    available; True/False are passed to the data layer as given. Raises ``DataError`` with a user-facing message.
    """
    (x_train, y_train), (x_test, y_test) = _load(spec, data_dir, allow_partial_test, download)
    recipe = spec.recipe
    if recipe.train_subset is not None:
        x_train, y_train = x_train[: recipe.train_subset], y_train[: recipe.train_subset]

    def images(x):
        return np.asarray(preprocess(x, spec.preprocessing), dtype=np.float32).reshape((len(x),) + spec.input_shape)

    arrays = dict(x_train=images(x_train), y_train=_labels(y_train, spec), x_val=None, y_val=None,
                  x_test=images(x_test), y_test=_labels(y_test, spec))
    if recipe.validation_test_head is not None:
        arrays["x_val"] = arrays["x_test"][: recipe.validation_test_head]
        arrays["y_val"] = arrays["y_test"][: recipe.validation_test_head]
    arrays["n_test"] = len(x_test)
    arrays["test_is_partial"] = len(x_test) < FULL_TEST_SIZE.get(spec.dataset, len(x_test))
    return arrays


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch (training plus its validation pass), in ``self.seconds``."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def recipe_callbacks(spec: ModelSpec) -> list:
    """The callbacks the document passed to ``fit``: document 004's ``EarlyStopping(patience=2, verbose=1)`` (Keras
    defaults otherwise: monitor ``val_loss``, no weight restoring) when the recipe has early stopping."""
    if spec.recipe.early_stopping_patience is None:
        return []
    return [keras.callbacks.EarlyStopping(patience=spec.recipe.early_stopping_patience, verbose=1)]


def fit_recipe(model: keras.Model, spec: ModelSpec, arrays: dict, epochs: int | None = None,
               batch_size: int | None = None, seed: int | None = None, verbose="auto",
               callbacks=()) -> keras.callbacks.History:
    """``model.fit`` with the document's recipe; compiles the model first if it is not compiled yet.

    ``epochs``/``batch_size`` override the recipe's. Validation is ``validation_data=(x_val, y_val)`` when
    ``prepare_arrays`` made one, else the recipe's ``validation_split`` (Keras: the last fraction, before
    shuffling). ``EarlyStopping(patience=...)`` on ``val_loss`` is added when the recipe has it. ``seed`` seeds
    Python, NumPy and TensorFlow (``keras.utils.set_random_seed``) just before fitting. The returned History has
    an extra attribute ``epoch_seconds`` (seconds per epoch, as run).
    """
    recipe = spec.recipe
    if seed is not None:
        keras.utils.set_random_seed(seed)
    if not getattr(model, "compiled", False):
        compile_model(model, spec)
    timer = EpochTimer()
    callbacks = [timer, *recipe_callbacks(spec), *callbacks]
    validation = {}
    if arrays.get("x_val") is not None:
        validation["validation_data"] = (arrays["x_val"], arrays["y_val"])
    elif recipe.validation_split:
        validation["validation_split"] = recipe.validation_split
    history = model.fit(arrays["x_train"], arrays["y_train"], epochs=epochs or recipe.epochs,
                        batch_size=batch_size or recipe.batch_size, shuffle=True, verbose=verbose,
                        callbacks=callbacks, **validation)
    history.epoch_seconds = list(timer.seconds)
    return history


def evaluate(model: keras.Model, arrays: dict, verbose=0) -> dict:
    """``model.evaluate`` on the test arrays: ``test_loss``, ``test_accuracy`` (fraction), plus ``n_test`` and
    ``test_is_partial`` so that a report can say "first 1,000 test images"."""
    scores = model.evaluate(arrays["x_test"], arrays["y_test"], verbose=verbose, return_dict=True)
    return dict(test_loss=float(scores["loss"]), test_accuracy=float(scores["accuracy"]),
                n_test=int(arrays.get("n_test", len(arrays["x_test"]))),
                test_is_partial=bool(arrays.get("test_is_partial", False)))
