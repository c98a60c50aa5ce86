"""The checks ``python -m keras_ref.convert`` and ``python -m keras_ref.parity`` make on their flags and their
``--inputs`` file before any conversion work: each bad value is one line (a ``UsageError``: ``error: ...``, exit 2)
naming the flag and the fix.

An ``--inputs`` .npz is read without pickle; every array's header (shape, dtype) is checked before numpy allocates
it, so a header declaring petabytes or an object array costs nothing.
"""

from __future__ import annotations

import math

import numpy as np

from lightning_cnn.data import read_user_npz
from lightning_cnn.errors import UsageError

# Keras, the twin in float32 and the twin in float64 each run every sample in one batch: 1,024 samples already hold
# three batches of activations (GBs for an ImageNet-sized network), and the check, the largest difference over the
# outputs, gains little past a few hundred samples.
MAX_SAMPLES = 1024
# An .npz member cannot be memory-mapped: it is read whole. 1 GiB holds 1,024 ImageNet-sized (224, 224, 3) float32
# samples (0.6 GiB) with room to spare.
MAX_INPUT_BYTES = 1 << 30
# --train-atol (1e-4) is calibrated on a few steps: float32 rounding differences between the two frameworks compound
# with every step, so past ~100 steps a mismatch no longer tells a wrong optimizer formula from accumulated rounding.
MAX_TRAIN_STEPS = 100
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def check_count(flag: str, value: int, what: str) -> None:
    """A number of samples: 1 to MAX_SAMPLES."""
    if not 1 <= value <= MAX_SAMPLES:
        raise UsageError(f"{flag} {value}: give 1 to {MAX_SAMPLES} {what} (every sample runs through Keras and the "
                         "twin in one batch)")


def check_tolerance(flag: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{flag} {value}: give a finite tolerance of 0 or more")


def check_seed(value: int) -> None:
    if value < 0:
        raise UsageError(f"--seed {value}: give a seed of 0 or more")


def check_train_steps(value: int) -> None:
    if not 0 <= value <= MAX_TRAIN_STEPS:
        raise UsageError(f"--train-steps {value}: give 0 to {MAX_TRAIN_STEPS} steps (past that, float32 rounding "
                         "compounds and the weight comparison stops telling a wrong formula from rounding)")


def read_inputs(path: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``: numeric, within MAX_INPUT_BYTES, headers checked before reading."""
    where = f"--inputs {path}"
    arrays = read_user_npz(path, where, UsageError, MAX_INPUT_BYTES, kinds=NUMERIC_KINDS)
    if not arrays:
        raise UsageError(f"{where}: holds no arrays; write the samples with numpy.savez")
    return arrays


def model_samples(path: str, arrays: dict, specs: list[dict], take: int | None = None) -> list[np.ndarray]:
    """One array per model input (``specs``: name, shape with the batch axis first, dtype), matched by name or,
    for a one-input model, the only array; checked against the input. ``take``: keep the first ``take`` samples
    (else more than MAX_SAMPLES is refused). An integer input's ids stay integer, everything else becomes float32."""
    where = f"--inputs {path}"
    names = [spec["name"] for spec in specs]
    if len(names) == 1 and len(arrays) == 1:  # one input, one array: its name does not matter
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(f"{where}: no array named {missing} (it has {sorted(arrays)}); name one array per model "
                         f"input {names}, in Keras layout")
    samples = []
    for spec in specs:
        x, name, expected = arrays[spec["name"]], spec["name"], tuple(spec["shape"][1:])
        wanted = f"(N, {', '.join('any' if d is None else str(d) for d in expected)})"
        if x.ndim != 1 + len(expected) or any(d is not None and d != n for d, n in zip(expected, x.shape[1:])):
            raise UsageError(f"{where}: array {name!r} has shape {x.shape}; the model takes {wanted} there, in "
                             "Keras layout (batch axis first)")
        if "int" in str(spec.get("dtype", "")) and x.dtype.kind not in "iu":
            raise UsageError(f"{where}: array {name!r} is {x.dtype}; the model's input {name!r} takes integer "
                             "ids: save it as an integer array")
        x = x[:take] if take is not None else x
        if not len(x):
            raise UsageError(f"{where}: array {name!r} holds no samples; give at least one")
        if take is None and len(x) > MAX_SAMPLES:
            raise UsageError(f"{where}: array {name!r} holds {len(x):,} samples, more than the bound {MAX_SAMPLES}"
                             f" (each runs through Keras and the twin in one batch); save the first {MAX_SAMPLES}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise UsageError(f"{where}: array {name!r} holds NaN or infinite values; give finite samples")
        samples.append(x if "int" in str(spec.get("dtype", "")) else x.astype(np.float32))
    if len({len(x) for x in samples}) > 1:
        raise UsageError(f"{where}: the arrays differ in length ({[len(x) for x in samples]}); give one sample per "
                         "row in every input")
    return samples
