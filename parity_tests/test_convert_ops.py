"""Raw keras.ops calls in functional graphs (``x + 3.0``, ``ops.mean``, ``x[:, 1:]``...): Keras vs its twin.

Each case wraps the operations between weighted layers (a Conv2D on the image, a Dense on the sequence) so both
weight directions are exercised (check_both_ways: Keras -> twin matches, perturbed twin -> Keras matches), on real
CIFAR-10 crops (rank-4 NHWC, NCHW in the twin: every axis is remapped) and real MNIST pixel rows (rank 3). The
tolerance is keras_ref.tolerance's rule (see test_convert_layers). Unsupported calls are refused with one line
naming the operation, its public name and place.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_ref.convert import convert, extract_graph
from keras_ref.parity import ParityError

from .test_convert_layers import check_both_ways, images, rows

pytestmark = pytest.mark.keras


def on_image(body, size=9, channels=3):
    """Input image -> Conv2D(4) -> body(x) (one or several outputs)."""
    inputs = keras.Input((size, size, channels))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    out = body(x)
    return keras.Model(inputs, out), images(size, channels)


def on_rows(body):
    """Input (7, 5) sequence -> Dense(6) -> body(x)."""
    inputs = keras.Input((7, 5))
    out = body(layers.Dense(6, name="dense")(inputs))
    return keras.Model(inputs, out), rows()


def two_images(body):
    """Two image branches (Conv2D 4 and Conv2D 4) -> body(a, b)."""
    inputs = keras.Input((9, 9, 3))
    a = layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    b = layers.Conv2D(4, 3, padding="same", name="conv_b")(inputs)
    return keras.Model(inputs, body(a, b)), images()


CASES = {
    # arithmetic with numbers (MobileNetV3's hard-sigmoid: (x + 3) * (1 / 6)) and tensors, both orders
    "scalar_arithmetic": lambda: on_image(lambda x: [(x + 3.0) * (1 / 6), 2.0 - x, x / 4.0, x ** 2, -x]),
    "tensor_arithmetic": lambda: two_images(lambda a, b: [a + b, a - b, a * b, a / (ops.abs(b) + 1.0),
                                                          ops.maximum(a, b), ops.minimum(a, 0.5),
                                                          ops.maximum(a, 0.0)]),
    # a per-image, per-channel vector (N, C) broadcast against the NHWC image: Keras pairs trailing axes
    "broadcast_lower_rank": lambda: on_image(lambda x: [x * ops.mean(x, axis=[1, 2], keepdims=True),
                                                        x + ops.mean(x, axis=[0, 1, 2])]),
    "comparisons_where": lambda: two_images(lambda a, b: [ops.cast(a > b, "float32"), ops.where(a >= 0.1, a, b),
                                                          ops.cast(ops.logical_and(a < 0.5, b <= 0.2), "float32"),
                                                          ops.cast(ops.equal(a, a), "float32") * b]),
    "unary_math": lambda: on_image(lambda x: [ops.sqrt(ops.abs(x)), ops.exp(-ops.square(x)),
                                              ops.log(ops.abs(x) + 1.0), ops.rsqrt(ops.abs(x) + 1.0),
                                              ops.clip(x, -0.2, 0.3), ops.sign(x), ops.floor(x * 3)]),
    "more_elementwise": lambda: on_image(lambda x: [
        ops.ceil(x * 3), ops.round(x * 3), ops.erf(x), ops.reciprocal(ops.absolute(x) + 1.0), ops.divide(x, 3.0),
        ops.floor_divide(x * 10, 3.0), ops.mod(x * 10, 3.0), ops.cast(ops.logical_not(x > 0), "float32"),
        ops.cast(ops.logical_or(x > 0.5, ops.less(x, -0.5)), "float32"), ops.cast(ops.not_equal(x, 0.0), "int32"),
        ops.selu(x), ops.softsign(x), ops.swish(x), ops.hard_swish(x), ops.abs(x)]),
    "activations": lambda: on_image(lambda x: [ops.relu(x), ops.relu6(x * 8), ops.sigmoid(x), ops.silu(x),
                                               ops.gelu(x), ops.gelu(x, approximate=False), ops.hard_sigmoid(x),
                                               ops.hard_silu(x), ops.leaky_relu(x, 0.1), ops.elu(x), ops.tanh(x),
                                               ops.softplus(x), keras.activations.relu(x, max_value=0.3)]),
    "softmax_axes": lambda: on_image(lambda x: [ops.softmax(x, axis=-1), ops.softmax(x, axis=1),
                                                ops.log_softmax(x, axis=2)]),
    # reductions: keepdims or not, over H/W (order kept), over H alone (N, W, C: the twin must reorder), all
    "reductions_image": lambda: on_image(lambda x: [ops.mean(x, axis=[1, 2]), ops.sum(x, axis=1),
                                                    ops.max(x, axis=-1), ops.min(x, axis=2, keepdims=True),
                                                    ops.mean(x, axis=(1, 3)), ops.sum(x, axis=[1, 2, 3])]),
    "reductions_sequence": lambda: on_rows(lambda x: [ops.mean(x, axis=1), ops.max(x, axis=-1, keepdims=True)]),
    "concatenate_stack": lambda: two_images(lambda a, b: [ops.concatenate([a, b], axis=-1),
                                                          ops.concatenate([a, b], axis=1),
                                                          ops.stack([ops.mean(a, axis=[1, 2]),
                                                                     ops.mean(b, axis=[1, 2])], axis=1)]),
    "stack_to_image": lambda: on_rows(lambda x: ops.stack([x, x * 2.0], axis=-1)),
    "split": lambda: on_image(lambda x: [*ops.split(x, 2, axis=-1), *ops.split(x, [2, 5], axis=1)]),
    "reshape_transpose": lambda: on_image(lambda x: [ops.reshape(x, (-1, 81, 4)),
                                                     ops.transpose(ops.reshape(x, (-1, 81, 4)), (0, 2, 1)),
                                                     ops.transpose(x, (0, 3, 1, 2)), ops.reshape(x, (-1, 9, 36))]),
    "squeeze_expand": lambda: on_image(lambda x: [ops.squeeze(ops.mean(x, axis=1, keepdims=True), axis=1),
                                                  ops.expand_dims(ops.mean(x, axis=[1, 2]), 1),
                                                  ops.expand_dims(ops.mean(x, axis=1), -1)]),
    "slicing_image": lambda: on_image(lambda x: [x[:, 1:], x[:, :, 2:-1, :3], x[..., 1], x[:, 0],
                                                 x[:, None, 2:5]]),
    "slicing_sequence": lambda: on_rows(lambda x: [x[:, 1:], x[:, -1], x[..., :3]]),
    "matmul_einsum": lambda: on_rows(lambda x: [ops.matmul(x, ops.transpose(x, (0, 2, 1))),
                                                ops.einsum("bij,bkj->bik", x, x)]),
    "einsum_image": lambda: on_image(lambda x: [ops.einsum("bhwc,bhwd->bcd", x, x),
                                                ops.einsum("bhwc->bwhc", x)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operations_match_keras_both_ways(case):
    keras.utils.set_random_seed(0)
    model, x = CASES[case]()
    check_both_ways(model, x)


def test_graph_records_the_operation_and_its_settings():
    model, _ = on_image(lambda x: ops.mean(x + 3.0, axis=[1, 2]))
    nodes = {n["keras_class"]: n for n in extract_graph(model).graph["nodes"]}
    assert nodes["keras.ops.add"]["steps"] == [dict(function="operator.add", args=[{"$": 0}, 3.0], kwargs={})]
    assert nodes["keras.ops.mean"]["steps"][0]["args"][1:] == [[2, 3], False]  # Keras axes 1, 2 = NCHW's 2, 3


@pytest.mark.parametrize("body, words", [
    (lambda x: ops.cumsum(x, axis=1), ["keras.ops.cumsum", "cumsum", "--supported"]),
    (lambda x: x[:, ::2], ["keras.ops.get_item", "step 2"]),
    (lambda x: ops.matmul(x, ops.transpose(x, (0, 1, 3, 2))), ["keras.ops.matmul", "rank 3"]),
])
def test_unsupported_operation_is_one_line_naming_it(body, words):
    model, _ = on_image(body)
    with pytest.raises(ParityError) as error:
        convert(model)
    message = str(error.value)
    assert message.startswith("operation '") and "\n" not in message
    assert all(word in message for word in words), message


def test_mobilenet_v3_small_converts():
    """keras.applications.MobileNetV3Small was refused for its raw ops alone (x + 3.0, x * (1 / 6))."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=5,
                                                classifier_activation=None, include_preprocessing=False)
    kinds = {n["keras_class"] for n in extract_graph(model).graph["nodes"]}
    assert {"keras.ops.add", "keras.ops.multiply"} <= kinds
    check_both_ways(model, np.ascontiguousarray(images(32) * 2 - 1))
