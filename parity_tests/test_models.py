"""Every documented model: architecture, parameter counts and outputs agree between Keras and PyTorch.

Weights go both ways: Keras -> PyTorch (keras_ref.build_model -> lightning_cnn.build_model) and PyTorch -> Keras,
then both run the same real test images (preprocessed as each spec says).
"""

from __future__ import annotations

import copy

import keras_ref
import lightning_cnn
import numpy as np
import pytest
import torch
from torch import nn

from keras_ref.convert import convert
from keras_ref.parity import copy_weights, walk_keras
from lightning_cnn.nets.models import count_params

from tests.spec_md import SPEC_PARAMS

from .conftest import keras_forward, keras_weights, nchw, real_batch, torch_forward, torch_weights

pytestmark = pytest.mark.keras

IDS = lightning_cnn.list_models()

# SPEC.md: the Flatten widths the architectures state (Flatten(576), Flatten(800), ...).
SPEC_FLATTEN = {
    "mnist_cnn_tf_tutorial": 576, "mnist_cnn_small": 800, "mnist_cnn_qiita": 800, "mnist_cnn_dropout": 1690,
    "cifar10_cnn": 2304, "cifar10_vgg16_transfer": 512, "mnist_mlp_128_64": 784,
    **{f"mnist_mlp_t9_{i}": 784 for i in range(1, 9)},
}
# SPEC.md: mnist_cnn_small "30,762 (160 + 4,640 + 25,632 + 330)".
SPEC_SMALL_LAYER_PARAMS = [160, 4_640, 25_632, 330]

# Tolerances.
# Probabilities lie in [0, 1]: float32 rounding differences between oneDNN/Eigen (TF) and torch's CPU kernels
# (summation order in conv/matmul, ~1e-7 relative per op) stay far below 1e-5 (measured <= 5e-6).
PROB_ATOL = 1e-5
# Logits: 1e-5 absolute as long as they are O(1) (every model on scaled inputs; measured <= 1e-6). A float32
# conv/matmul's rounding error grows with the size of the values it sums, so for larger logits the bound is
# 1e-5 *relative to the largest logit*: cifar10_cnn is fed raw 0-255 pixels (as its document did) and its
# logits reach ~50, where each framework alone is ~3e-5 away from exact (float64) arithmetic. The float64
# reference in the test checks exactly that: both sides are that close to exact, so the gap is rounding.
LOGIT_RTOL = 1e-5


def batch_size(model_id: str) -> int:
    return 8 if "vgg16" in model_id else 64  # VGG16 (14.8M parameters): a few images are enough on 2 cores


_KERAS_CATEGORY = {"Conv2D": "conv", "Dense": "dense", "MaxPooling2D": "pool", "Flatten": "flatten"}
_TORCH_CATEGORY = [(nn.Conv2d, "conv"), (nn.Linear, "dense"), (nn.MaxPool2d, "pool"), (nn.Flatten, "flatten")]
_SHAPE_PRESERVING_KERAS = ("Dropout", "Activation")
_SHAPE_PRESERVING_TORCH = (nn.Dropout, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.Identity)


def keras_layer_table(model, x):
    """[(category, output shape without batch, params)] for every layer that can change shape or holds weights."""
    table, previous = [], x.shape
    for step, out in keras_forward(model, x)[0]:
        if step.kind in _SHAPE_PRESERVING_KERAS:
            assert out.shape == previous, f"{step.path} changed the shape"
        else:
            table.append((_KERAS_CATEGORY[step.kind], out.shape[1:], step.layer.count_params()))
        previous = out.shape
    return table


def torch_layer_table(model, x):
    table, previous = [], x.shape
    for unit, out in torch_forward(model, x)[0]:  # outputs already transposed to NHWC
        if isinstance(unit.module, _SHAPE_PRESERVING_TORCH):
            assert out.shape == previous, f"{unit.name} changed the shape"
        else:
            category = next(c for cls, c in _TORCH_CATEGORY if isinstance(unit.module, cls))
            table.append((category, out.shape[1:], sum(p.numel() for p in unit.module.parameters())))
        previous = out.shape
    return table


@pytest.mark.parametrize("model_id", IDS)
def test_layers_shapes_and_param_counts(model_id):
    """Layer by layer, output shapes (NCHW transposed to NHWC) and parameter counts agree, and equal SPEC.md."""
    km = keras_ref.build_model(model_id, seed=0)
    tm = lightning_cnn.build_model(model_id, seed=0)
    x, _ = real_batch(model_id, 2)

    keras_table, torch_table = keras_layer_table(km, x), torch_layer_table(tm, x)
    assert keras_table == torch_table

    total, trainable = SPEC_PARAMS[model_id]
    assert km.count_params() == total
    assert sum(int(np.prod(v.shape)) for v in km.trainable_weights) == trainable
    assert count_params(tm) == total
    assert count_params(tm, trainable_only=True) == trainable
    assert sum(params for _, _, params in keras_table) == total

    flatten = [shape for category, shape, _ in keras_table if category == "flatten"]
    assert flatten == [(SPEC_FLATTEN[model_id],)]
    assert keras_table[-1][:2] == ("dense", (10,))
    if model_id == "mnist_cnn_small":
        assert [p for c, _, p in keras_table if c in ("conv", "dense")] == SPEC_SMALL_LAYER_PARAMS


def _torch_out(model, x):
    with torch.no_grad():
        logits = model.eval()(nchw(x))
    return logits.numpy(), torch.softmax(logits, dim=1).numpy()


def _check_outputs(model_id, km, tm, x):
    _, k_logits, k_probs = keras_forward(km, x)
    t_logits, t_probs = _torch_out(tm, x)
    with torch.no_grad():  # exact-arithmetic reference: the same torch model in float64
        exact = copy.deepcopy(tm).double().eval()(nchw(x).double()).numpy()
    logit_atol = LOGIT_RTOL * max(1.0, float(np.abs(exact).max()))
    diffs = dict(logits=float(np.abs(t_logits - k_logits).max()), probs=float(np.abs(t_probs - k_probs).max()),
                 keras_vs_exact=float(np.abs(k_logits - exact).max()),
                 torch_vs_exact=float(np.abs(t_logits - exact).max()))
    print(f"{model_id}: max|logit| {np.abs(exact).max():.3g}, " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert diffs["probs"] <= PROB_ATOL, diffs
    assert diffs["logits"] <= logit_atol, diffs
    assert diffs["keras_vs_exact"] <= logit_atol and diffs["torch_vs_exact"] <= logit_atol, diffs
    # The comparison has teeth: the model is not trivially constant over the batch.
    assert np.ptp(k_probs, axis=0).max() > 1e-3


@pytest.mark.parametrize("model_id", IDS)
def test_forward_keras_to_torch(model_id):
    km = keras_ref.build_model(model_id, seed=0)
    tm = lightning_cnn.build_model(model_id, seed=1)  # different initial weights: the copy must do the work
    x, _ = real_batch(model_id, batch_size(model_id))
    before = np.abs(_torch_out(tm, x)[0] - keras_forward(km, x)[1]).max()
    assert before > 1e-3, "independently initialised models already agree: the test would prove nothing"
    copy_weights(km, tm)
    _check_outputs(model_id, km, tm, x)


@pytest.mark.parametrize("model_id", IDS)
def test_forward_torch_to_keras(model_id):
    tm = lightning_cnn.build_model(model_id, seed=2)
    km = keras_ref.build_model(model_id, seed=3)
    x, _ = real_batch(model_id, batch_size(model_id))
    copy_weights(tm, km)
    _check_outputs(model_id, km, tm, x)


@pytest.mark.parametrize("model_id", IDS)
def test_round_trip_is_bit_identical(model_id):
    """Keras -> PyTorch -> Keras (and PyTorch -> Keras -> PyTorch) returns exactly the same arrays."""
    km = keras_ref.build_model(model_id, seed=4)
    original = keras_weights(km)
    tm = lightning_cnn.build_model(model_id, seed=5)
    copy_weights(km, tm)
    km2 = keras_ref.build_model(model_id, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(original, keras_weights(km2)))
    copy_weights(tm, km2)
    assert len(original) == len(keras_weights(km2))
    assert all(np.array_equal(a, b) for a, b in zip(original, keras_weights(km2)))

    torch_original = torch_weights(tm)
    tm2 = lightning_cnn.build_model(model_id, seed=7)
    copy_weights(km2, tm2)
    assert all(np.array_equal(torch_original[k], v) for k, v in torch_weights(tm2).items())


def test_vgg_walk_pairs_nested_top_model():
    """The transfer model: 13 VGG16 convs + the nested 'top_model' Sequential pair with torchvision's layout."""
    km = keras_ref.build_model("cifar10_vgg16_transfer", seed=0)
    paths = [s.path for s in walk_keras(km) if s.kind in ("Conv2D", "Dense")]
    assert paths[:2] == ["block1_conv1", "block1_conv2"] and len(paths) == 15
    assert [p.split("/")[0] for p in paths[-2:]] == ["top_model", "top_model"]
    twin = convert(km)  # frozen Keras layers -> requires_grad=False in the twin
    assert count_params(twin) == 14_848_586 and count_params(twin, trainable_only=True) == 7_213_322
    assert [name for name, _ in twin.named_children()][-1].startswith("top_model__")  # nested models inlined
