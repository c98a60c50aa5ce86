"""The Keras contender of the benchmark (``lightning_cnn.benchmark``): ``model.fit`` and ``model.predict``."""

from __future__ import annotations

import time

from ._tf import load_tensorflow

keras = load_tensorflow()  # the coexistence guard, then TensorFlow: see _tf.py

from lightning_cnn.benchmark import AUTOCAST_DTYPES, grouped_windows  # noqa: E402

from .models import build_model  # noqa: E402
from .training import compile_model  # noqa: E402


def bench_keras(spec, x, y, x_test, batch_size, precision, steps, warmup, window, steps_per_execution):
    """Keras's own loop: one epoch of ``model.fit`` (a timestamp per execution) and ``model.predict``."""
    if precision in AUTOCAST_DTYPES:
        keras.mixed_precision.set_global_policy("mixed_" + AUTOCAST_DTYPES[precision])
    model = build_model(spec.id, seed=0)
    compile_model(model, spec, steps_per_execution=steps_per_execution)
    labels = keras.utils.to_categorical(y, 10) if spec.recipe.loss == "categorical_crossentropy" else y
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # once per execution of steps_per_execution steps
            stamps.append(time.perf_counter())

    stamps.append(time.perf_counter())
    model.fit(x, labels, batch_size=batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[Stamp()])
    model.predict(x_test[:batch_size * 4], batch_size=batch_size, verbose=0)  # warm the predict function
    start = time.perf_counter()
    model.predict(x_test, batch_size=batch_size, verbose=0)
    return grouped_windows(stamps, batch_size, warmup, window, steps_per_execution), \
        len(x_test) / (time.perf_counter() - start)
