"""The one tolerance rule for "the twin computes what the Keras model computes" (forward outputs, float32).

    max |Keras - twin|  <=  FACTOR * max |twin - twin in float64|  +  atol * max(1, max |Keras output|)

Why this rule and not a fixed tolerance: both frameworks run the same graph in float32 and sum in different
orders, so they disagree by their float32 rounding errors, and those grow with depth and with how the model's
weights amplify them (a random-weight EfficientNetV2-L is 100% off its own float64 run in Keras itself; a trained
MobileNet is 1e-7 off). The twin in float64 is the float64 reference of the graph: on every ``keras.applications``
model it matches Keras run in float64 (``keras.config.set_floatx('float64')``, same weights) within ~1e-12 of the
largest output (docs/parity.md). So ``max |twin - twin in float64|`` is the twin's own float32 error e_t, Keras's
is e_k, and a correct conversion gives ``max |Keras - twin| <= e_k + e_t``. Measured e_k / e_t: 1.05 to 1.7
(InceptionV3, EfficientNetV2B0-B3, random and calibrated BatchNorm statistics), so FACTOR = 4 leaves e_k room up
to 3 e_t. A conversion mistake (layout, padding, epsilon, weight order) moves the twin in float32 and float64
alike, so it shows in ``|Keras - twin|`` but not in e_t: it fails unless it is below 4x float32 rounding, where it
cannot be told from rounding anyway. ``atol`` (default 1e-6, relative to max(1, the largest output), ~8 float32
ulps) is the floor for graphs whose float32 and float64 runs agree exactly (no summation: pads, pools, reshapes).
"""

from __future__ import annotations

import copy

import numpy as np

FACTOR = 4.0
ATOL = 1e-6
RULE = "max_abs_diff <= 4 * twin_float32_error + atol * max(1, max_abs_output)"


def tolerance(twin_float32_error: float, max_abs_output: float, atol: float = ATOL) -> float:
    """The largest max |Keras - twin| the rule accepts for one output."""
    return FACTOR * twin_float32_error + atol * max(1.0, max_abs_output)


def within(report: dict, atol: float = ATOL) -> bool:
    """Whether one output's report (``max_abs_diff``, ``twin_float32_error``, ``max_abs_output``) passes."""
    return report["max_abs_diff"] <= tolerance(report["twin_float32_error"], report["max_abs_output"], atol)


def float64_twin(twin):
    """A float64 copy of the twin (the module itself is untouched), in eval mode."""
    return copy.deepcopy(twin).double().eval()


def float64_inputs(inputs: list) -> list:
    """Floating inputs as float64 (integer ids stay integers)."""
    return [x.double() if x.is_floating_point() else x for x in inputs]


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
