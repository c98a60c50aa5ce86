"""keras_ref.convert, one small hand-made model per layer kind: Keras vs its twin, both weight directions.

Every weight is random (biases, gammas and BN moving statistics included, so nothing is an identity), spatial
sizes are odd so that stride-2 'same' padding is asymmetric, inputs are real MNIST/CIFAR-10 test images (or real
pixel rows for sequences). Tolerance: keras_ref.tolerance's rule (max |Keras - twin| <= 4 x the twin's own float32
error against its float64 run + 1e-6 x max(1, the largest output)). float32 kernels of the two frameworks sum in
different orders (~1e-7 relative per op for these sizes); a layout, padding, gate order or axis mistake is O(1)
relative, so the rule separates the two by orders of magnitude.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from keras import layers

from keras_ref.convert import (RULES, compare, convert, copy_weights_to_keras, extract_graph, layer_table,
                               save_converted)
from keras_ref.parity import ParityError
from keras_ref.tolerance import ShiftedGroupedConv2d, float64_twin, within

from .conftest import real_batch

pytestmark = pytest.mark.keras



def images(size=9, channels=3, n=4):
    """Real CIFAR-10 test images (scaled to [0, 1]) cropped to ``size`` x ``size`` x ``channels``."""
    x, _ = real_batch("cifar10_cnn", n)
    x = x / 255.0 if x.max() > 1.5 else x  # the spec's preprocessing may leave raw pixels
    return np.ascontiguousarray(x[:, :size, :size, :channels], dtype=np.float32)


def rows(steps=7, features=5, n=4):
    """Real MNIST pixel rows as a sequence: (n, steps, features)."""
    x, _ = real_batch("mnist_cnn_small", n)
    return np.ascontiguousarray(x[:, 10:10 + steps, 8:8 + features, 0])


def randomize(model, seed=0):
    """Random values for every weight; BN variances positive and away from 1, means away from 0."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if w.name in ("count",) or "int" in str(w.dtype):
                continue
            shape = tuple(w.shape)
            if "variance" in w.name:
                w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            else:
                w.assign((rng.normal(0.0, 0.5, shape) + (0.3 if "mean" in w.name else 0.0)).astype("float32"))
    return model


def assert_close(model, twin, inputs):
    for r in compare(model, twin, inputs):
        assert r["max_abs_output"] > 0
        assert within(r), r


def check_both_ways(model, inputs, seed=0):
    """Keras -> twin matches; then perturb the twin, copy back into Keras: Keras matches the perturbed twin."""
    randomize(model, seed)
    inputs = inputs if isinstance(inputs, list) else [inputs]
    twin = convert(model)
    assert_close(model, twin, inputs)
    before = [np.array(w.numpy()) for w in model.weights]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in twin.state_dict(keep_vars=True).items():
            # (a parameter Keras does not have, e.g. LayerNorm's weight when scale=False, is frozen: not moved)
            if (isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad) or \
                    name.endswith(("running_mean", "running_var")):
                tensor.mul_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
    copy_weights_to_keras(twin, model)
    after = [np.array(w.numpy()) for w in model.weights]
    if any(p.numel() for p in twin.parameters()):
        assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "copy back changed nothing"
    assert_close(model, twin, inputs)
    return twin


def functional(shape, *stack, dtype="float32"):
    inputs = keras.Input(shape, dtype=dtype)
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x)


# name -> (model builder, input builder); each builder runs inside the test (cheap models).
CASES = {
    "conv2d_same_stride2_odd": (lambda: functional((9, 9, 3), layers.Conv2D(4, 3, strides=2, padding="same",
                                                                            activation="relu")), images),
    "conv2d_valid_dilated_nobias": (lambda: functional((9, 9, 3), layers.Conv2D(4, 3, dilation_rate=2,
                                                                                use_bias=False)), images),
    "conv2d_groups_rect": (lambda: functional((9, 9, 4), layers.Conv2D(6, (3, 1), strides=(2, 1), padding="same",
                                                                       groups=2)),
                           lambda: np.ascontiguousarray(images().repeat(2, -1)[..., :4])),
    "depthwise_conv2d": (lambda: functional((9, 9, 3), layers.DepthwiseConv2D(3, strides=2, padding="same",
                                                                              depth_multiplier=2)), images),
    "separable_conv2d": (lambda: functional((9, 9, 3), layers.SeparableConv2D(5, 3, strides=2, padding="same",
                                                                              depth_multiplier=2,
                                                                              activation="relu")), images),
    "conv2d_transpose_same": (lambda: functional((9, 9, 3), layers.Conv2DTranspose(4, 3, strides=2,
                                                                                   padding="same")), images),
    "conv2d_transpose_valid": (lambda: functional((9, 9, 3), layers.Conv2DTranspose(4, 3, strides=2)), images),
    "conv2d_transpose_small_kernel": (lambda: functional((9, 9, 3), layers.Conv2DTranspose(4, 2, strides=3,
                                                                                           padding="same")), images),
    "conv1d_same_stride2": (lambda: functional((7, 5), layers.Conv1D(4, 3, strides=2, padding="same")), rows),
    "conv1d_causal_dilated": (lambda: functional((7, 5), layers.Conv1D(4, 3, padding="causal",
                                                                       dilation_rate=2)), rows),
    "pool1d": (lambda: functional((7, 5), layers.MaxPooling1D(2, padding="same"),
                                  layers.AveragePooling1D(2, strides=1, padding="same"),
                                  layers.AveragePooling1D(2)), rows),
    "global_pool1d": (lambda: multi((7, 5), layers.GlobalAveragePooling1D(), layers.GlobalMaxPooling1D(
        keepdims=True)), rows),
    "pool2d_same_odd": (lambda: functional((9, 9, 3), layers.MaxPooling2D(3, strides=2, padding="same"),
                                           layers.AveragePooling2D(2, padding="same"),
                                           layers.AveragePooling2D(2, strides=1)), images),
    "global_pool2d": (lambda: multi((9, 9, 3), layers.GlobalAveragePooling2D(keepdims=True),
                                    layers.GlobalMaxPooling2D()), images),
    "batchnorm_rank4_2_3": (lambda: functional((7, 5), layers.BatchNormalization(), layers.Conv1D(3, 2),
                                               layers.Flatten(), layers.BatchNormalization(center=False)), rows),
    "batchnorm_image": (lambda: functional((9, 9, 3), layers.BatchNormalization(epsilon=1e-5, momentum=0.9)),
                        images),
    "layernorm": (lambda: multi((9, 9, 3), layers.LayerNormalization(), layers.LayerNormalization(axis=[1, 2, 3]),
                                layers.LayerNormalization(axis=[1, 3], scale=False)), images),
    "layernorm_sequence": (lambda: functional((7, 5), layers.LayerNormalization(epsilon=1e-6)), rows),
    "dense_after_flatten": (lambda: functional((9, 9, 3), layers.Conv2D(4, 3, strides=2), layers.Flatten(),
                                               layers.Dense(6, activation="tanh"), layers.Dense(3)), images),
    "flatten_to_batchnorm": (lambda: functional((9, 9, 3), layers.Conv2D(2, 3, strides=2), layers.Flatten(),
                                                layers.BatchNormalization(), layers.Dense(3)), images),
    "dense_on_image_and_sequence": (lambda: functional((9, 9, 3), layers.Dense(4), layers.Reshape((81, 4)),
                                                       layers.Dense(2)), images),
    # volumes (N, D, H, W, C) keep Keras's layout: permuted to channels first around each 3-D kernel
    "conv3d_pool3d": (lambda: functional((3, 9, 9, 3), layers.Conv3D(4, 3, strides=(1, 2, 2), padding="same",
                                                                      activation="relu"),
                                         layers.BatchNormalization(), layers.MaxPooling3D((1, 2, 2), padding="same"),
                                         layers.AveragePooling3D(2, strides=1, padding="same"),
                                         layers.Conv3D(3, (1, 3, 3)), layers.GlobalAveragePooling3D()),
                      lambda: np.ascontiguousarray(images(9, 3, 6).reshape(2, 3, 9, 9, 3))),
    "global_max_pool3d": (lambda: functional((3, 9, 9, 3), layers.MaxPooling3D(2, padding="same"),
                                             layers.GlobalMaxPooling3D(keepdims=True)),
                          lambda: np.ascontiguousarray(images(9, 3, 6).reshape(2, 3, 9, 9, 3))),
    "upsampling": (lambda: multi((9, 9, 3), layers.UpSampling2D(2), layers.UpSampling2D((2, 3),
                                                                                     interpolation="bilinear")),
                   images),
    "crop_and_pad": (lambda: functional((9, 9, 3), layers.Cropping2D(((1, 2), (0, 3))),
                                        layers.ZeroPadding2D(((2, 0), (1, 1)))), images),
    "reshape_permute": (lambda: functional((9, 9, 3), layers.Permute((2, 1, 3)), layers.Reshape((27, 9)),
                                           layers.Permute((2, 1)), layers.Reshape((3, 9, 9)),
                                           layers.Conv2D(2, 2)), images),
    "merges": (lambda: merges(), images),
    "concatenate_axes": (lambda: concats(), images),
    "activations": (lambda: activations(), images),
    "activation_layers": (lambda: multi((9, 9, 3), layers.ReLU(max_value=6.0), layers.ReLU(negative_slope=0.1,
                                                                                           threshold=0.2),
                                        layers.LeakyReLU(negative_slope=0.3), layers.ELU(alpha=0.7),
                                        layers.PReLU(shared_axes=[1, 2]), layers.PReLU(),
                                        layers.Softmax(), layers.Softmax(axis=1)), lambda: images() - 0.5),
    "squeeze_excitation": (lambda: squeeze_excite(), images),
    "rescaling_normalization": (lambda: rescale_normalize(), images),
    "dropouts_identity_in_eval": (lambda: functional((9, 9, 3), layers.Dropout(0.5), layers.SpatialDropout2D(0.3),
                                                     layers.GaussianNoise(0.2), layers.GaussianDropout(0.2),
                                                     layers.Reshape((81, 3)), layers.SpatialDropout1D(0.3)),
                                  images),
    "embedding_lstm_gru": (lambda: functional((7,), layers.Embedding(50, 6), layers.LSTM(5, return_sequences=True),
                                              layers.GRU(4), layers.Dense(3), dtype="int32"),
                           lambda: (rows()[:, :, 0] * 49).round().astype("int32")),
    "gru_sequences_lstm_last": (lambda: functional((7, 5), layers.GRU(4, return_sequences=True), layers.LSTM(3)),
                                rows),
    "multi_input_output_shared": (lambda: two_inputs_shared(), lambda: [images(), images()[::-1].copy()]),
    "nested_models": (lambda: nested(), images),
}


def multi(shape, *parallel):
    """One input, several layers applied to it side by side, each output flattened and concatenated."""
    inputs = keras.Input(shape)
    outs = [layers.Flatten()(layer(inputs)) for layer in parallel]
    return keras.Model(inputs, layers.Concatenate()(outs) if len(outs) > 1 else outs[0])


def merges():
    inputs = keras.Input((9, 9, 3))
    a = layers.Conv2D(4, 3, padding="same")(inputs)
    b = layers.Conv2D(4, 1)(inputs)
    c = layers.Conv2D(4, 3, padding="same", activation="sigmoid")(inputs)
    outs = [layers.Add()([a, b, c]), layers.Subtract()([a, b]), layers.Multiply()([a, c]), layers.Average()([a, b]),
            layers.Maximum()([a, b, c]), layers.Minimum()([a, c])]
    return keras.Model(inputs, layers.Concatenate()(outs))


def concats():
    inputs = keras.Input((9, 9, 3))
    a = layers.Conv2D(2, 3, padding="same")(inputs)
    b = layers.Conv2D(3, 1)(inputs)
    h = layers.Concatenate(axis=1)([a, a])  # Keras H axis
    w = layers.Concatenate(axis=2)([a, a])  # Keras W axis
    vectors = layers.Concatenate()([layers.Flatten()(h), layers.Flatten()(w)])
    return keras.Model(inputs, [layers.Concatenate(axis=-1)([a, b]), vectors])


ACTIVATION_NAMES = ("relu", "relu6", "elu", "selu", "gelu", "swish", "silu", "hard_sigmoid", "hard_swish",
                    "softplus", "softsign", "sigmoid", "tanh", "leaky_relu", "mish", "softmax", "log_softmax",
                    "exponential")


def activations():
    inputs = keras.Input((9, 9, 3))
    outs = [layers.Flatten()(layers.Conv2D(2, 3, activation=name, name=f"conv_{name}")(inputs))
            for name in ACTIVATION_NAMES]
    outs.append(layers.Activation("gelu")(layers.Dense(3)(layers.Flatten()(inputs))))
    return keras.Model(inputs, layers.Concatenate()(outs))


def squeeze_excite():
    """MobileNetV3/EfficientNet-style squeeze-and-excitation: GAP -> Reshape -> 1x1 convs -> Multiply."""
    inputs = keras.Input((9, 9, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="swish", name="stem")(inputs)
    s = layers.GlobalAveragePooling2D(name="squeeze")(x)
    s = layers.Reshape((1, 1, 8), name="to_image")(s)
    s = layers.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = layers.Conv2D(8, 1, activation="hard_sigmoid", name="expand")(s)
    return keras.Model(inputs, layers.Multiply(name="excite")([x, s]))


def rescale_normalize():
    norm = layers.Normalization()
    norm.adapt(images(n=16))
    inverse = layers.Normalization(invert=True, mean=[0.1, 0.2, 0.3], variance=[2.0, 3.0, 4.0])
    return functional((9, 9, 3), layers.Rescaling(2.0, offset=-1.0), layers.Rescaling([0.5, 1.0, 2.0],
                                                                                      offset=[0.1, 0.0, -0.1]),
                      norm, inverse)


def two_inputs_shared():
    a, b = keras.Input((9, 9, 3), name="left"), keras.Input((9, 9, 3), name="right")
    conv = layers.Conv2D(4, 3, strides=2, padding="same", name="shared_conv")
    fa, fb = conv(a), conv(b)
    merged = layers.Concatenate()([fa, fb])
    return keras.Model([a, b], [layers.GlobalAveragePooling2D()(merged), layers.Subtract()([fa, fb])])


def nested():
    inner = keras.Sequential([keras.Input((5, 5, 4)), layers.Conv2D(4, 3, padding="same"),
                              layers.BatchNormalization(), layers.ReLU()], name="block")
    inputs = keras.Input((9, 9, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    return keras.Model(inputs, layers.Add()([x, inner(x)]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_kind_both_directions(case):
    build_model, build_inputs = CASES[case]
    check_both_ways(build_model(), build_inputs())


# Rules whose only Keras users are keras.applications models: exercised by test_convert_applications' default run.
APPLICATION_LAYERS = {"LayerScale": "ConvNeXtTiny", "CustomScaleLayer": "InceptionResNetV2"}


def test_every_registered_layer_kind_is_exercised():
    """The table of supported layers and operations and the test cases agree (a new rule needs a case): the
    cases here and in the family files (ops, recurrent, attention, masking, augmentation) call every registered
    kind."""
    from . import (test_convert_attention, test_convert_augmentation, test_convert_masking, test_convert_ops,
                   test_convert_recurrent)

    models = [build() for build, _ in CASES.values()]
    models += [build()[0] for build in test_convert_ops.CASES.values()]
    models += [build() for module in (test_convert_recurrent, test_convert_attention, test_convert_masking)
               for build, _ in module.CASES.values()]
    models += [test_convert_augmentation.augmented(name) for name in test_convert_augmentation.AUGMENTATIONS]
    seen = {node["keras_class"] for model in models for node in extract_graph(model).graph["nodes"]}
    assert set(RULES) - seen - set(APPLICATION_LAYERS) == set()


def test_twin_reads_as_the_keras_graph():
    twin = convert(randomize(squeeze_excite()))
    code = twin.code
    # one fx value per Keras call, named after the layer (the steps inside a call are named "_layer_i")
    assert [n.name for n in twin.graph.nodes if n.op not in ("placeholder", "output") and
            not n.name.startswith("_")] == ["stem", "squeeze", "to_image", "reduce", "expand", "excite"]
    assert "excite = stem * expand" in code
    assert "(reduce): Conv2d(8, 2, kernel_size=(1, 1), stride=(1, 1))" in str(twin)  # stock modules


def test_shared_layer_is_one_module_called_twice():
    twin = convert(two_inputs_shared())
    assert twin.code.count("self.shared_conv(") == 2
    assert sum(1 for name, _ in twin.named_children() if name.startswith("shared_conv")) == 1


def test_unsupported_layer_names_layer_class_and_place(tmp_path):
    inputs = keras.Input((7, 5))
    x = layers.Dense(4, name="ok")(inputs)
    x = layers.LSTM(3)(layers.UnitNormalization(name="unit")(x))
    model = keras.Model(inputs, x, name="outer")
    with pytest.raises(ParityError, match=r"'unit' \(UnitNormalization\): unsupported layer"):
        convert(model)
    out = tmp_path / "twin"
    with pytest.raises(ParityError, match="unit"):
        save_converted(model, out)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unsupported_option_is_refused_by_its_rule():
    model = functional((7, 5), layers.GRU(3, reset_after=False, name="classic"))
    with pytest.raises(ParityError, match=r"'classic' \(GRU\).*reset_after"):
        convert(model)
    model = functional((9, 9, 3), layers.Conv2D(2, 3, activation=keras.activations.relu6, name="fine"),
                       layers.Activation(lambda t: t * 2, name="custom"))
    with pytest.raises(ParityError, match=r"'custom' \(Activation\): activation"):
        convert(model)


def test_docs_list_exactly_the_registered_layers():
    """docs/converting.md and the README carry the table generated from the registry, as it is now."""
    repo = Path(__file__).resolve().parents[1]
    for doc in ("docs/converting.md", "README.md"):
        assert layer_table() in (repo / doc).read_text(), f"{doc}: regenerate with python -m keras_ref.convert --supported"


@pytest.mark.parametrize("groups, out_per_group, kernel, stride, dilation, padding, bias", [
    (6, 1, 3, 1, 1, 1, False),       # depthwise, 'same'
    (6, 2, (5, 3), 2, 1, (2, 1), True),  # depth_multiplier 2, stride 2, rectangular
    (6, 1, 3, 1, 2, 0, True),        # dilated, 'valid'
    (3, 4, 3, 2, 1, 1, True),        # grouped (2 input channels a group)
])
def test_float64_grouped_conv_is_the_stock_conv(groups, out_per_group, kernel, stride, dilation, padding, bias):
    """The float64 reference's grouped convolution (keras_ref.tolerance.ShiftedGroupedConv2d) gives the stock
    nn.Conv2d's float64 result to float64 rounding (1e-12 relative: a wrong offset, stride or channel order is
    O(1)), and float64_twin puts it in place of every grouped convolution only."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, groups * out_per_group, kernel, stride=stride, dilation=dilation, padding=padding,
                           groups=groups, bias=bias).double()
    x = torch.from_numpy(images(11, 3, 2).transpose(0, 3, 1, 2).repeat(2, axis=1)).double()
    with torch.no_grad():
        expected, got = conv(x), ShiftedGroupedConv2d(conv)(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-12 * float(expected.abs().max())
    model = torch.nn.Sequential(conv, torch.nn.Conv2d(conv.out_channels, 4, 1)).float()
    assert [type(m) for m in float64_twin(model)] == [ShiftedGroupedConv2d, torch.nn.Conv2d]
    assert [type(m) for m in float64_twin(model, shifted_grouped_convs=False)] == [torch.nn.Conv2d] * 2
