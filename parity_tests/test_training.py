"""Training-step parity: the recipe's optimizer takes the same steps in Keras and in PyTorch.

From the same weights, 3 steps (so Adam's step counter / bias correction is exercised) on the same real batch,
dropout off (Keras: model(x, training=False) inside a GradientTape + optimizer.apply_gradients; torch:
model.eval() + lightning_cnn.recipes.optim.make_optimizer), with the recipe's loss (Keras: sparse / categorical
cross-entropy on the softmax output; torch: cross_entropy on logits). Then the Keras weights are copied into
the torch layout and compared with the torch weights.

Why three kinds of test:
- float64, end to end: the formulas are compared without float32 noise. This is the tight check of every
  optimizer (the gradient agrees to ~1e-15 relative, so any difference is the optimizer's).
- float32, end to end, where float32 is well conditioned (MNIST models, inputs in [0, 1]). Adam and RMSprop
  divide by a running gradient magnitude, so a gradient element near 0 has its rounding noise amplified (Adam at
  step 1: by lr / eps_hat = 1e-3 / 3.16e-6 ~ 300x), and a ReLU whose pre-activation is within rounding of 0 can
  come out on different sides in the two frameworks (seen with cifar10_cnn's raw 0-255 pixels, where
  pre-activations reach the hundreds: one of 32,768 dense units flips, and RMSprop's normalised step turns that
  into a weight difference of ~7e-4). Such float32 runs do not measure the optimizer, so:
- float32 with identical gradients (cifar10_cnn RMSprop, mnist_cnn_qiita Adam): the Keras gradients are fed
  to both optimizers, which isolates the optimizer arithmetic in float32.
Negative controls: torch's stock Adam (eps 1e-8, or Keras's 1e-7 in torch's place) and stock RMSprop
(alpha 0.99, or 0.9 with torch's epsilon placement) must FAIL the same tolerances.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools

import keras
import keras_ref
import lightning_cnn
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F

from keras_ref.parity import copy_weights
from lightning_cnn.recipes.optim import make_optimizer
from lightning_cnn.specs import optimizer_settings

from .conftest import nchw, real_batch

pytestmark = pytest.mark.keras

STEPS = 3

# float64 tolerances. Gradients agree to ~1e-15 relative and the update formulas are the same; what remains is
# how Keras turns its Python-float hyper-parameters into tensors: they pass through float32 even for float64
# variables (measured: SGD's momentum 0.9 -> 0.899999976, Adam's beta powers in the bias correction from
# float32(0.9), float32(0.999)). For SGD / RMSprop / Adadelta that is <= ~1e-8 relative of the total step
# (<= ~1e-11 here; measured <= 3e-12), so 1e-9. For Adam, the bias-corrected step size at t=1 comes out
# 6.7e-6 relative smaller (sqrt(1 - float32(0.999)) vs sqrt(0.001)): 6.7e-9 at lr 1e-3, and in steps 2-3 Adam
# amplifies the resulting tiny gradient differences near g = 0 by up to lr / eps_hat ~ 300 (measured 1.0e-7
# after 3 steps), so 1e-6. Formula differences (stock torch optimizers below) are >= 1e-3.
ATOL_FLOAT64 = {"sgd": 1e-9, "rmsprop": 1e-9, "adadelta": 1e-9, "adam": 1e-6}

# float32, end to end, well-conditioned models (MNIST, inputs in [0, 1]). Gradients agree to ~1e-8 absolute
# (float32 summation order). SGD and Adadelta pass a gradient difference through at most x lr (SGD lr 0.01 ->
# ~1e-10 per step; Adadelta at lr 1.0 scales it by sqrt(u+eps)/sqrt(v+eps) <= 1 at these steps): 1e-6.
ATOL_FLOAT32 = {"sgd": 1e-6, "adadelta": 1e-6, "rmsprop": 1e-6,
                # Adam: a gradient difference d near g = 0 moves the update by up to lr * d / eps_hat with
                # eps_hat = eps / sqrt(1 - beta2^t) = 3.16e-6 at step 1: 1e-3 * 1e-8 / 3.16e-6 ~ 3e-6 per step,
                # ~1e-5 after 3 steps. Stock torch Adam is off by ~2e-3 on the same run.
                "adam": 2e-5}

# float32, identical gradients: only the optimizer arithmetic differs, i.e. float32 rounding of the same formula:
# each step can land one ulp apart on a weight, and weights here reach |w| ~ 0.5 where an ulp is 6e-8, so a few
# ulps after 3 steps: 1e-7 (measured <= 4.5e-8). A formula difference is >= 1e-3 (see the negative controls).
ATOL_SAME_GRADIENTS = 1e-7


# --- the two training loops ------------------------------------------------------------------------------


def keras_optimizer(recipe):
    """The recipe's Keras 3 optimizer, every hyper-parameter explicit (lightning_cnn.specs.optimizer_settings)."""
    s = optimizer_settings(recipe)
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=s["learning_rate"], beta_1=s["beta_1"], beta_2=s["beta_2"],
                                     epsilon=s["epsilon"])
    if recipe.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=s["learning_rate"], rho=s["rho"], momentum=s["momentum"],
                                        epsilon=s["epsilon"])
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=s["learning_rate"], momentum=s["momentum"])
    if recipe.optimizer == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=s["learning_rate"], rho=s["rho"], epsilon=s["epsilon"])
    raise ValueError(recipe.optimizer)


def keras_labels(recipe, y):
    return y if recipe.loss == "sparse_categorical_crossentropy" else keras.utils.to_categorical(y, 10)


def keras_loss_fn(recipe):
    if recipe.loss == "sparse_categorical_crossentropy":
        return keras.losses.SparseCategoricalCrossentropy()
    assert recipe.loss == "categorical_crossentropy"
    return keras.losses.CategoricalCrossentropy()


def keras_gradients(km, x, y, recipe):
    loss_fn = keras_loss_fn(recipe)
    with tf.GradientTape() as tape:
        loss = loss_fn(keras_labels(recipe, y), km(x, training=False))  # training=False: dropout off
    return tape.gradient(loss, km.trainable_variables)


def train_keras(km, x, y, recipe, steps=STEPS):
    optimizer = keras_optimizer(recipe)
    for _ in range(steps):
        optimizer.apply_gradients(zip(keras_gradients(km, x, y, recipe), km.trainable_variables))


def train_torch(tm, x, y, recipe, steps=STEPS, make=None):
    tm.eval()  # dropout off, as training=False on the Keras side
    params = [p for p in tm.parameters() if p.requires_grad]
    optimizer = make(params) if make else make_optimizer(params, recipe)
    xt, yt = nchw(x).to(next(tm.parameters()).dtype), torch.from_numpy(y)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(tm(xt), yt).backward()  # logits + cross_entropy == softmax + CE
        optimizer.step()


@contextlib.contextmanager
def keras_floatx(dtype):
    """Keras layers, losses and optimizers created inside use ``dtype``. Both settings are needed: Keras caches
    its global dtype policy from floatx the first time any layer asks for it."""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)


def twins(model_id, dtype):
    """Keras and torch builds of model_id with identical weights, in float32 or float64."""
    with keras_floatx(dtype):
        km = keras_ref.build_model(model_id, seed=0)
    assert {v.dtype for v in km.weights} == {dtype}
    tm = lightning_cnn.build_model(model_id, seed=1)
    if dtype == "float64":
        tm = tm.double()
    copy_weights(km, tm)
    return km, tm


def compare(km, tm, start):
    """(max |torch - keras| over all weights, max |torch - start|, [names of parameters that moved])."""
    keras_now = copy.deepcopy(start)
    copy_weights(km, keras_now)
    return compare_with(keras_now, tm, start)


def compare_with(keras_now, tm, start):
    """``compare`` with the Keras weights already in the torch layout (``keras_now``)."""
    now, ref, initial = tm.state_dict(), keras_now.state_dict(), start.state_dict()
    diff = max(float((now[k] - ref[k]).abs().max()) for k in now)
    moved = max(float((now[k] - initial[k]).abs().max()) for k in now)
    changed = {k for k in now if not torch.equal(now[k], initial[k])}
    keras_changed = {k for k in now if not torch.equal(ref[k], initial[k])}
    assert changed == keras_changed, "the two sides trained different parameters"
    return diff, moved, changed


def batch(model_id, dtype="float32"):
    x, y = real_batch(model_id, 8 if "vgg16" in model_id else 64)
    return x.astype(dtype), y


def with_optimizer(model_id, optimizer, **args):
    """The model's recipe with another optimizer (to run RMSprop on a well-conditioned model too)."""
    recipe = lightning_cnn.get_spec(model_id).recipe
    return dataclasses.replace(recipe, optimizer=optimizer, optimizer_args=args)


# --- float64, end to end -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def keras_float64_steps(model_id):
    """The recipe's Keras steps in float64 from the twins' shared start, run once per model id: the positive test
    and the negative controls compare their torch runs with the same Keras result (nothing in it is random:
    dropout is off, the batch is fixed). (torch start, Keras result in the torch layout, x, y)."""
    km, tm = twins(model_id, "float64")
    start = copy.deepcopy(tm)
    x, y = batch(model_id, "float64")
    with keras_floatx("float64"):  # the loss and the optimizer's variables take floatx when created
        train_keras(km, x, y, lightning_cnn.get_spec(model_id).recipe)
    keras_now = copy.deepcopy(start)
    copy_weights(km, keras_now)
    return start, keras_now, x, y


FLOAT64_CASES = [
    ("mnist_cnn_small", "adam"),
    ("cifar10_cnn", "rmsprop"),  # learning_rate 1e-4, raw pixels
    ("mnist_cnn_dropout", "adadelta"),  # learning_rate 1.0
    ("mnist_mlp_t9_1", "sgd"),  # Table 9 SGD row: Keras defaults, lr 0.01, no momentum
    ("cifar10_vgg16_transfer", "sgd"),  # lr 1e-4, momentum 0.9; VGG16 blocks 1-4 frozen
]


@pytest.mark.parametrize("model_id,optimizer", FLOAT64_CASES, ids=[f"{m}-{o}" for m, o in FLOAT64_CASES])
def test_train_steps_float64(model_id, optimizer):
    recipe = lightning_cnn.get_spec(model_id).recipe
    assert recipe.optimizer == optimizer
    start, keras_now, x, y = keras_float64_steps(model_id)
    tm = copy.deepcopy(start)
    train_torch(tm, x, y, recipe)
    diff, moved, changed = compare_with(keras_now, tm, start)
    print(f"float64 {model_id} {optimizer}: max |torch - keras| {diff:.2e} (weights moved up to {moved:.2e})")
    assert moved > 1e-5
    assert diff <= ATOL_FLOAT64[optimizer]
    if model_id == "cifar10_vgg16_transfer":  # frozen VGG16 blocks 1-4 untouched on both sides
        frozen = {k for k in start.state_dict() if k.startswith("features.") and int(k.split(".")[1]) < 24}
        assert len(frozen) == 20 and not (frozen & changed)
        assert changed == set(start.state_dict()) - frozen


NEGATIVE_CASES = [
    ("mnist_cnn_small", "torch.optim.Adam (stock eps=1e-8)", lambda p: torch.optim.Adam(p, lr=1e-3)),
    ("mnist_cnn_small", "torch.optim.Adam (eps=1e-7, torch's placement)",
     lambda p: torch.optim.Adam(p, lr=1e-3, eps=1e-7)),
    ("cifar10_cnn", "torch.optim.RMSprop (stock alpha=0.99)", lambda p: torch.optim.RMSprop(p, lr=1e-4)),
    ("cifar10_cnn", "torch.optim.RMSprop (alpha=0.9, eps=1e-7, torch's placement)",
     lambda p: torch.optim.RMSprop(p, lr=1e-4, alpha=0.9, eps=1e-7)),
]


@pytest.mark.parametrize("model_id,label,make", NEGATIVE_CASES, ids=[c[1] for c in NEGATIVE_CASES])
def test_stock_torch_optimizers_fail_the_tolerance(model_id, label, make):
    """The check has teeth: torch's own optimizers with torch's formulas/defaults do NOT match Keras."""
    recipe = lightning_cnn.get_spec(model_id).recipe
    start, keras_now, x, y = keras_float64_steps(model_id)
    tm = copy.deepcopy(start)
    train_torch(tm, x, y, recipe, make=make)
    diff, moved, _ = compare_with(keras_now, tm, start)
    print(f"float64 {model_id} {label}: max |torch - keras| {diff:.2e} (weights moved up to {moved:.2e})")
    assert diff > 100 * ATOL_FLOAT64[recipe.optimizer], f"{label} unexpectedly matches Keras"


def test_stock_torch_adam_fails_float32_tolerance():
    model_id = "mnist_cnn_small"
    recipe = lightning_cnn.get_spec(model_id).recipe
    km, tm = twins(model_id, "float32")
    start = copy.deepcopy(tm)
    x, y = batch(model_id)
    train_keras(km, x, y, recipe)
    train_torch(tm, x, y, recipe, make=lambda p: torch.optim.Adam(p, lr=1e-3))
    diff, _, _ = compare(km, tm, start)
    print(f"float32 {model_id} stock torch Adam: max |torch - keras| {diff:.2e}")
    assert diff > 10 * ATOL_FLOAT32["adam"]


# --- float32, end to end -----------------------------------------------------------------------------------

FLOAT32_CASES = [
    ("mnist_cnn_small", None),  # Adam, sparse CE
    ("mnist_mlp_128_64", None),  # Adam, categorical CE
    ("mnist_cnn_dropout", None),  # Adadelta lr 1.0
    ("mnist_mlp_t9_1", None),  # SGD lr 0.01
    ("cifar10_vgg16_transfer", None),  # SGD lr 1e-4 momentum 0.9 (VGG-preprocessed CIFAR)
    ("mnist_cnn_small", dict(optimizer="rmsprop", learning_rate=1e-4)),  # RMSprop on a well-conditioned model
    ("mnist_cnn_small", dict(optimizer="rmsprop", learning_rate=1e-4, momentum=0.9)),
]


def _case_id(case):
    model_id, override = case
    return model_id + ("" if override is None else "-" + "-".join(f"{k}={v}" for k, v in override.items()))


@pytest.mark.parametrize("model_id,override", FLOAT32_CASES, ids=[_case_id(c) for c in FLOAT32_CASES])
def test_train_steps_float32(model_id, override):
    recipe = lightning_cnn.get_spec(model_id).recipe
    if override:
        override = dict(override)
        recipe = with_optimizer(model_id, override.pop("optimizer"), **override)
    km, tm = twins(model_id, "float32")
    start = copy.deepcopy(tm)
    x, y = batch(model_id)
    train_keras(km, x, y, recipe)
    train_torch(tm, x, y, recipe)
    diff, moved, _ = compare(km, tm, start)
    print(f"float32 {_case_id((model_id, override))} ({recipe.optimizer}): max |torch - keras| {diff:.2e} "
          f"(weights moved up to {moved:.2e})")
    assert moved > 1e-5
    assert diff <= ATOL_FLOAT32[recipe.optimizer]


# --- float32, identical gradients -------------------------------------------------------------------------


def keras_gradients_in_torch_layout(km, grads, holder):
    """Put Keras gradients (Keras layout) into ``holder``'s parameters (torch layout), via copy_weights."""
    scratch = keras.models.clone_model(km)
    for variable, grad in zip(scratch.trainable_variables, grads):
        variable.assign(grad)
    copy_weights(scratch, holder)
    return [p.detach().clone() for p in holder.parameters() if p.requires_grad]


SAME_GRADIENT_CASES = ["cifar10_cnn", "mnist_cnn_qiita"]  # RMSprop lr 1e-4 (raw pixels); Adam


@pytest.mark.parametrize("model_id", SAME_GRADIENT_CASES)
def test_optimizer_steps_float32_same_gradients(model_id):
    recipe = lightning_cnn.get_spec(model_id).recipe
    km, tm = twins(model_id, "float32")
    start = copy.deepcopy(tm)
    holder = copy.deepcopy(tm)
    x, y = batch(model_id)
    keras_opt = keras_optimizer(recipe)
    params = [p for p in tm.parameters() if p.requires_grad]
    torch_opt = make_optimizer(params, recipe)
    for _ in range(STEPS):
        grads = keras_gradients(km, x, y, recipe)
        for p, g in zip(params, keras_gradients_in_torch_layout(km, grads, holder)):
            p.grad = g
        torch_opt.step()
        keras_opt.apply_gradients(zip(grads, km.trainable_variables))
    diff, moved, _ = compare(km, tm, start)
    print(f"float32 same gradients {model_id} ({recipe.optimizer}): max |torch - keras| {diff:.2e} "
          f"(weights moved up to {moved:.2e})")
    assert moved > 1e-5
    assert diff <= ATOL_SAME_GRADIENTS


@pytest.mark.parametrize("model_id", lightning_cnn.list_models())
def test_keras_ref_recipe_optimizer_is_the_one_verified_here(model_id):
    """keras_ref.training.make_optimizer (what the Keras scripts train with) has the hyper-parameters used above."""
    from keras_ref.training import make_optimizer as keras_ref_optimizer

    recipe = lightning_cnn.get_spec(model_id).recipe
    ours, theirs = keras_optimizer(recipe).get_config(), keras_ref_optimizer(recipe).get_config()
    assert type(keras_optimizer(recipe)) is type(keras_ref_optimizer(recipe))
    assert {k: v for k, v in ours.items() if k != "name"} == {k: v for k, v in theirs.items() if k != "name"}
