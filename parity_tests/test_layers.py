"""keras_ref.convert.convert on models beyond the documented ones, the error cases, and loading user files safely.

Each extra model is built in Keras with a fixed seed, turned into its PyTorch twin, and run on real MNIST test
images; every layer's output is compared (the twin's value named after each Keras layer, NCHW transposed back to
NHWC), then the weights go back into a fresh Keras clone and must come out bit-identical.
"""

from __future__ import annotations

import keras
import keras_ref
import lightning_cnn
import numpy as np
import pytest
import torch
from keras import layers
from torch import nn

from keras_ref.convert import convert, copy_weights_to_keras
from keras_ref.parity import ParityError, copy_weights, load_keras_model, main, walk_keras

from .conftest import keras_weights, nchw, nhwc, real_batch, torch_weights

pytestmark = pytest.mark.keras

# Outputs of these small models are O(1) (inputs in [0, 1], glorot weights): float32 rounding differences
# between the frameworks' kernels are ~1e-7; 1e-5 leaves a wide margin and still catches any layout,
# padding or pooling mistake (those are O(0.1)).
ATOL = 1e-5


def mnist(n=32, size=28):
    x, _ = real_batch("mnist_cnn_small", n)
    return np.ascontiguousarray(x[:, :size, :size, :])


def assert_twin_matches(km, x, atol=ATOL):
    """Layer by layer and at the output: twin(x in NCHW) == Keras(x), then a bit-identical copy back."""
    twin = convert(km)
    keras_layers = keras_forward_plain(km, x)
    torch_layers, out = twin_values(twin, x)
    assert len(keras_layers) == len(torch_layers)
    worst = 0.0
    for step, k_out in keras_layers:
        name = step.path.replace("/", "__")
        t_out = torch_layers[name]
        if step.kind == "Flatten" and len(step.input_shape) == 4 and k_out.shape == t_out.shape:
            # A Flatten read only by Dense layers flattens NCHW as is (their columns are permuted instead):
            # compare it in torch's C,H,W order then.
            chw = k_out.reshape(-1, *step.input_shape[1:]).transpose(0, 3, 1, 2).reshape(k_out.shape[0], -1)
            if np.abs(chw - t_out).max() < np.abs(k_out - t_out).max():
                k_out = chw
        assert k_out.shape == t_out.shape, f"{step.path} vs {name}: {k_out.shape} != {t_out.shape}"
        diff = float(np.abs(k_out - t_out).max())
        assert diff <= atol, f"{step.path} ({step.kind}) vs {name}: max abs diff {diff:.3g}"
        worst = max(worst, diff)
        if diff > 1e-6:
            print(f"  {step.path} ({step.kind}): {diff:.2e} (values up to {np.abs(k_out).max():.3g})")
    expected = km(x, training=False).numpy()
    assert np.abs(out - expected).max() <= atol
    assert np.ptp(expected, axis=0).max() > 1e-3  # not a constant output: the comparison means something
    print(f"{km.name}: {len(keras_layers)} layers, worst layer max abs diff {worst:.2e}")

    clone = keras.models.clone_model(km)
    copy_weights_to_keras(twin, clone)
    assert all(np.array_equal(a, b) for a, b in zip(keras_weights(km), keras_weights(clone)))
    return twin


def twin_values(twin, x):
    """({value name: output in Keras layout} for every Keras call, the output): the twin's fx value of a call is
    named after its Keras layer (the steps inside a call are named '_<layer>_<i>')."""
    recorded = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.op not in ("placeholder", "output") and not n.name.startswith("_"):
                recorded[n.name] = nhwc(value)
            return value

    with torch.no_grad():
        out = Recorder(twin.eval()).run(nchw(x))
    return recorded, nhwc(out)


def keras_forward_plain(km, x):
    """[(KerasStep, output)] for every leaf layer, in inference mode."""
    outputs, h = [], keras.ops.convert_to_tensor(x)
    for step in walk_keras(km):
        h = step.layer(h, training=False)
        outputs.append((step, h.numpy()))
    return outputs


def seq(input_shape, *stack, name=None):
    keras.utils.set_random_seed(7)
    return keras.Sequential([keras.Input(shape=input_shape), *stack], name=name)


@pytest.mark.parametrize("size", [28, 27])
def test_stride2_same_convs(size):
    """TF pads 'same' asymmetrically (extra row/column bottom/right) for stride 2, even kernels, odd inputs."""
    km = seq((size, size, 1),
             layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
             layers.Conv2D(8, 4, strides=2, padding="same", activation="tanh"),  # even kernel
             layers.Conv2D(6, 2, strides=1, padding="same"),  # even kernel, stride 1: also asymmetric
             layers.Conv2D(5, 3, strides=2, padding="valid", activation="sigmoid"),
             layers.Flatten(), layers.Dense(10, activation="softmax"), name=f"stride2_same_{size}")
    assert_twin_matches(km, mnist(size=size))


def _bn_model():
    return seq((28, 28, 1),
               layers.Conv2D(8, 3),
               layers.BatchNormalization(),  # Keras defaults: momentum 0.99, epsilon 1e-3
               layers.Activation("relu"),
               layers.MaxPooling2D(2, padding="same"),
               layers.Conv2D(8, 3, use_bias=False),
               layers.BatchNormalization(momentum=0.5, epsilon=1e-5),
               layers.ReLU(),
               layers.Flatten(),
               layers.BatchNormalization(momentum=0.5),  # on flattened HWC features: permuted like Dense
               layers.Dense(10),
               layers.Softmax(), name="batchnorm")


def test_batchnorm_inference_fresh():
    km = _bn_model()
    twin = assert_twin_matches(km, mnist())
    bns = [m for m in twin.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert [(bn.eps, round(bn.momentum, 6)) for bn in bns] == [(1e-3, 0.01), (1e-5, 0.5), (1e-3, 0.5)]


def test_batchnorm_after_training_batches():
    """Moving statistics (and gamma/beta) made non-trivial by a few real training batches, then compared."""
    km = _bn_model()
    x, y = real_batch("mnist_cnn_small", 96, start=1000)
    km.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    km.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    bn_layers = [layer for layer in km.layers if isinstance(layer, layers.BatchNormalization)]
    assert max(float(np.abs(b.moving_variance.numpy() - 1).max()) for b in bn_layers) > 1e-2
    assert max(float(np.abs(b.moving_mean.numpy()).max()) for b in bn_layers) > 1e-2
    assert max(float(np.abs(b.gamma.numpy() - 1).max()) for b in bn_layers) > 1e-4
    assert_twin_matches(km, mnist())


@pytest.mark.parametrize("size", [28, 27])
def test_pooling_padding_and_global_pooling(size):
    km = seq((size, size, 1),
             layers.Conv2D(6, 3, padding="same", activation="relu"),
             layers.AveragePooling2D(2),
             layers.MaxPooling2D(3, strides=2, padding="same"),
             layers.AveragePooling2D(3, strides=2, padding="same"),  # TF does not count the padding
             layers.ZeroPadding2D(((1, 2), (0, 3))),
             layers.Conv2D(4, 3, activation="tanh"),
             layers.GlobalAveragePooling2D(),
             layers.Dense(10, activation="softmax"), name=f"pooling_{size}")
    assert_twin_matches(km, mnist(size=size))


def test_global_max_pooling_keepdims_and_zero_padding():
    km = seq((28, 28, 1),
             layers.ZeroPadding2D(2),
             layers.Conv2D(6, 5, strides=2, activation="relu"),
             layers.MaxPooling2D(2, strides=1),
             layers.GlobalMaxPooling2D(keepdims=True),
             layers.Flatten(),
             layers.Dense(12, activation="sigmoid", use_bias=False),
             layers.Dense(10, activation="softmax"), name="global_max")
    assert_twin_matches(km, mnist())


def test_functional_linear_model():
    keras.utils.set_random_seed(11)
    inputs = keras.Input(shape=(28, 28, 1))
    h = layers.Conv2D(12, 3, activation="relu")(inputs)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = layers.Flatten()(h)
    h = layers.Dense(32, activation="relu")(h)
    h = layers.Dropout(0.3)(h)
    outputs = layers.Dense(10, activation="softmax")(h)
    assert_twin_matches(keras.Model(inputs, outputs, name="functional"), mnist())


def test_nested_sequential_models():
    keras.utils.set_random_seed(12)
    block = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(8, 3, activation="relu"),
                              layers.MaxPooling2D()], name="block")
    head = keras.Sequential([keras.Input((1352,)), layers.Dense(16, activation="relu"), layers.Dense(10)],
                            name="head")
    km = keras.Sequential([keras.Input((28, 28, 1)), block, layers.Flatten(), head, layers.Activation("softmax")],
                          name="nested")
    twin = assert_twin_matches(km, mnist())
    assert [name for name, _ in twin.named_children()][0].startswith("block__")  # nested models are inlined
    # and nested inside a functional model, as in the VGG16 transfer model
    inputs = keras.Input((28, 28, 1))
    outer = keras.Model(inputs, head(layers.Flatten()(block(inputs))), name="functional_nested")
    keras_out = outer(mnist(), training=False).numpy()
    with torch.no_grad():
        torch_out = convert(outer)(nchw(mnist())).numpy()
    assert np.abs(keras_out - torch_out).max() <= ATOL


def test_flat_input_mlp():
    km = seq((784,), layers.Dense(32, activation="relu"), layers.Dense(10, activation="softmax"), name="flat")
    assert_twin_matches(km, mnist().reshape(-1, 784))


def test_documented_models_have_twins_too():
    """convert also rebuilds the documented models (here the smallest CNN) without lightning_cnn's builder."""
    km = keras_ref.build_model("mnist_cnn_small", seed=0)
    assert_twin_matches(km, mnist())


# --- error cases ---------------------------------------------------------------------------------------------


def test_lambda_layer_is_refused_with_its_name():
    km = seq((28, 28, 1), layers.Conv2D(4, 3), layers.Lambda(lambda t: t * 2.0, name="double_it"),
             layers.Flatten(), layers.Dense(10))
    with pytest.raises(ParityError, match=r"double_it.*Lambda.*unsupported"):
        convert(km)
    tm = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(2704, 10))
    before = torch_weights(tm)
    with pytest.raises(ParityError, match="double_it"):
        copy_weights(km, tm)
    assert all(np.array_equal(before[k], v) for k, v in torch_weights(tm).items())


def test_lstm_converts():
    """Not a CNN: an LSTM twin (keras_ref.convert's layer tests cover the layer in detail)."""
    km = seq((28, 28), layers.LSTM(8, name="rnn"), layers.Dense(10))
    x = mnist()[..., 0]
    with torch.no_grad():
        out = convert(km)(torch.from_numpy(x)).numpy()
    assert np.abs(out - km(x, training=False).numpy()).max() <= ATOL


def test_unsupported_torch_module_is_refused():
    km = keras_ref.build_model("mnist_mlp_t9_3", seed=0)
    tm = nn.Sequential(nn.Flatten(), nn.LSTM(784, 128), nn.Linear(128, 10))
    with pytest.raises(ParityError, match=r"'1'.*LSTM"):
        copy_weights(km, tm)


def test_non_linear_functional_model_converts():
    inputs = keras.Input((16,))
    h = layers.Dense(16, name="branch")(inputs)
    outputs = layers.Dense(10)(layers.Add(name="residual")([inputs, h]))
    km = keras.Model(inputs, outputs)
    x = mnist()[:, 0, :16, 0]
    with torch.no_grad():
        out = convert(km)(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    assert np.abs(out - km(x, training=False).numpy()).max() <= ATOL


def test_copy_needs_one_keras_and_one_torch_model():
    with pytest.raises(ParityError, match="between a Keras model and a torch module"):
        copy_weights(keras_ref.build_model("mnist_cnn_small"), keras_ref.build_model("mnist_cnn_small"))


@pytest.mark.parametrize("source,destination", [
    ("mnist_mlp_t9_5", "mnist_mlp_t9_3"),  # first Dense pairs fine, the second one does not
    ("mnist_cnn_small", "mnist_cnn_qiita"),
    ("mnist_cnn_tf_tutorial", "mnist_cnn_small"),  # 5 vs 4 weighted layers
])
def test_shape_mismatch_keras_to_torch_leaves_destination_unchanged(source, destination):
    km = keras_ref.build_model(source, seed=0)
    tm = lightning_cnn.build_model(destination, seed=1)
    before = torch_weights(tm)
    with pytest.raises(ParityError, match="mismatch|differ"):
        copy_weights(km, tm)
    after = torch_weights(tm)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("source,destination", [("mnist_mlp_t9_5", "mnist_mlp_t9_3"),
                                                ("cifar10_cnn", "mnist_cnn_dropout")])
def test_shape_mismatch_torch_to_keras_leaves_destination_unchanged(source, destination):
    tm = lightning_cnn.build_model(source, seed=0)
    km = keras_ref.build_model(destination, seed=1)
    before = keras_weights(km)
    with pytest.raises(ParityError):
        copy_weights(tm, km)
    assert all(np.array_equal(a, b) for a, b in zip(before, keras_weights(km)))


def test_all_or_nothing_when_only_the_last_layer_fails():
    """Every Keras layer pairs and converts; an extra torch Linear at the very end fails the copy. Nothing moves."""
    km = keras_ref.build_model("mnist_mlp_t9_3", seed=0)
    tm = nn.Sequential(lightning_cnn.build_model("mnist_mlp_t9_3", seed=1), nn.Linear(10, 10))
    before = torch_weights(tm)
    with pytest.raises(ParityError, match=r"'1' \(Linear\) has no Keras counterpart"):
        copy_weights(km, tm)
    assert all(np.array_equal(before[k], v) for k, v in torch_weights(tm).items())


def test_batchnorm_epsilon_mismatch_is_refused():
    km = _bn_model()
    twin = convert(km)
    bn = next(m for m in twin.modules() if isinstance(m, nn.BatchNorm2d))
    bn.eps = 1e-5  # torch's default, not Keras's 1e-3
    with pytest.raises(ParityError, match="epsilon"):
        copy_weights(km, twin)


# --- user model files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_user_model_file_cli(tmp_path, suffix, capsys):
    km = seq((28, 28, 1), layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"), layers.Flatten(),
             layers.Dense(10, activation="softmax"), name="user_model")
    path = tmp_path / f"model{suffix}"
    km.save(path)
    assert main([str(path), "--batch", "4"]) == 0
    assert "max |Keras - PyTorch|" in capsys.readouterr().out


def test_user_model_file_with_lambda_is_not_deserialized(tmp_path):
    """safe_mode=True: Keras refuses to rebuild a Lambda's pickled Python code instead of running it."""
    km = seq((4,), layers.Lambda(lambda t: t + 1.0, name="code"), layers.Dense(2))
    path = tmp_path / "lambda.keras"
    km.save(path)
    with pytest.raises(ValueError, match="(?i)lambda|safe_mode"):
        load_keras_model(path)
