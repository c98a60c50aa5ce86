"""Shared fixtures for the Keras <-> PyTorch parity suite (real data, CPU, fixed seeds).

TensorFlow is loaded first thing, through ``keras_ref.load_tensorflow()``: its environment defaults, then the
TensorFlow/PyTorch coexistence guard, then TensorFlow.
"""

from __future__ import annotations

from functools import lru_cache

import keras_ref

keras = keras_ref.load_tensorflow()

import lightning_cnn  # noqa: E402
from lightning_cnn.data import load_dataset, preprocess  # noqa: E402
from keras_ref.compare import calibrate_batchnorm  # noqa: E402,F401  (shared with keras_ref.bench_twins)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# torch on 2 CI cores: deterministic kernels where they exist, float32 everywhere.
torch.manual_seed(0)
torch.set_default_dtype(torch.float32)


def pytest_configure(config):
    # Keras 3 warns when a functional model built from a list of inputs (VGG16's input_tensor) is called on a
    # bare array; the call is correct.
    config.addinivalue_line("filterwarnings", "ignore:The structure of `inputs` doesn't match:UserWarning")
    # Keras 3.15's saving code calls np.array(copy=False) on TF tensors under numpy 2.4 (Keras's issue, harmless).
    config.addinivalue_line("filterwarnings",
                            "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@lru_cache(maxsize=None)
def _test_split(dataset: str):
    """(x_test uint8, y_test int64 flat) of the real data set, found by the data layer's lookup (CI sets
    $LIGHTNING_CNN_DATA); the shared CIFAR-10 copy has the first 1,000 test images."""
    _, (x, y) = load_dataset(dataset, allow_partial_test=True)
    return np.asarray(x), np.asarray(y).reshape(-1).astype(np.int64)


def real_batch(model_id: str, n: int, start: int = 0):
    """The first ``n`` real test images of the model's data set, preprocessed as its spec says (NHWC float32),
    with integer labels."""
    spec = lightning_cnn.get_spec(model_id)
    x, y = _test_split(spec.dataset)
    xb = np.ascontiguousarray(preprocess(x[start:start + n], spec.preprocessing), dtype=np.float32)
    assert xb.shape == (n, *spec.input_shape)
    return xb, y[start:start + n]


def nchw(x: np.ndarray) -> torch.Tensor:
    """Keras-layout batch -> torch tensor (rank-4 NHWC -> NCHW)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))


def nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return np.array(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)  # a copy: in-place ReLUs come after


def keras_forward(model, x: np.ndarray):
    """Run a linear Keras model layer by layer (inference mode).

    Returns (per-layer outputs [(KerasStep, output array)], logits, probabilities): the logits are the
    pre-softmax activations (the input of a final softmax Activation, or the final Dense's x@kernel+bias
    computed with the same Keras ops its call uses), the probabilities are ``model(x)``.
    """
    from keras_ref.parity import walk_keras

    steps = walk_keras(model)
    outputs, h = [], keras.ops.convert_to_tensor(x)
    logits = None
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if last and step.kind == "Activation" and step.layer.activation.__name__ == "softmax":
            logits = h
        if last and step.kind == "Dense" and step.layer.activation.__name__ == "softmax":
            logits = keras.ops.add(keras.ops.matmul(h, step.layer.kernel), step.layer.bias)
        h = step.layer(h, training=False)
        outputs.append((step, h.numpy()))
    probs = model(x, training=False).numpy()
    assert logits is not None, f"{model.name}: no final softmax"
    return outputs, logits.numpy(), probs


def torch_forward(model: torch.nn.Module, x: np.ndarray):
    """(per-unit outputs [(TorchUnit, output in Keras layout)], output in Keras layout) in eval mode."""
    from keras_ref.parity import walk_torch

    units = walk_torch(model)
    records = []
    hooks = [u.module.register_forward_hook(lambda m, i, o, u=u: records.append((u, nhwc(o)))) for u in units]
    try:
        with torch.no_grad():
            out = model.eval()(nchw(x))
    finally:
        for hook in hooks:
            hook.remove()
    return records, nhwc(out)


def keras_weights(model) -> list[np.ndarray]:
    return [np.array(w.numpy()) for w in model.weights]


def torch_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state on both sides, and with Keras in float32."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    torch.manual_seed(1234)
    yield
