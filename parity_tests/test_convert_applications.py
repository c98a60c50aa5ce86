"""keras_ref.convert on real architectures: every keras.applications family, and a ResNet bottleneck block.

All ``weights=None``, ``classifier_activation=None`` (the comparison is on logits), BatchNormalization statistics
set from each layer's real input statistics then perturbed (conftest.calibrate_batchnorm: arbitrary random
statistics make deep random-weight networks chaotic, which hides errors), fed real CIFAR-10 test images resized
(bilinear) to the input size. Tolerance: keras_ref.tolerance's rule (4 x the twin's own float32 error against its
float64 run + 1e-6 x max(1, the largest logit)): the frameworks' kernels sum in different orders; a wrong layout,
padding or weight order is O(1). Then the twin is perturbed and copied back into Keras, which must then match it.

The default run converts the smallest model of every family (each layer kind the family uses) at the smallest
input it accepts; every other keras.applications model is ``slow``. Each model is built once (construction is
the slow part). The float64 checks compare the twin run in float64 with Keras run in float64 (same weights):
they agree to ~1e-12 of the largest logit, so what remains in float32 is summation order, not the conversion.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from keras import layers
from torch.nn import BatchNorm2d as BatchNorm, Conv2d as Conv  # the twin's stock modules

from keras_ref.convert import (compare, convert, copy_weights_to_keras, extract_graph, from_twin_output,
                               to_twin_input)
from keras_ref.layerwise import compare_layers, summarize
from keras_ref.tolerance import ATOL, float64_twin, max_abs, within
from lightning_cnn.converted import prepare_for_inference
from lightning_cnn.converted.inference import OneDNNConv2d, ScaleShift

from .conftest import _test_split, calibrate_batchnorm

pytestmark = pytest.mark.keras

N_IMAGES = 4


def cifar_images(size: int, n: int = N_IMAGES) -> np.ndarray:
    """The first ``n`` real CIFAR-10 test images scaled to [-1, 1] and resized to ``size`` x ``size``."""
    x, _ = _test_split("cifar10")
    x = x[:n].astype(np.float32) / 127.5 - 1.0
    if size != x.shape[1]:
        x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size), interpolation="bilinear"))
    return np.ascontiguousarray(x, dtype=np.float32)


def resnet_block() -> keras.Model:
    """ResNet50's stem and first bottleneck block (projection shortcut), written as keras.applications writes it."""
    inputs = keras.Input((32, 32, 3))
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(16, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    shortcut = layers.Conv2D(32, 1, strides=2, name="block1_0_conv")(x)
    shortcut = layers.BatchNormalization(epsilon=1.001e-5, name="block1_0_bn")(shortcut)
    y = layers.Conv2D(8, 1, strides=2, name="block1_1_conv")(x)
    y = layers.BatchNormalization(epsilon=1.001e-5, name="block1_1_bn")(y)
    y = layers.Activation("relu", name="block1_1_relu")(y)
    y = layers.Conv2D(8, 3, padding="same", name="block1_2_conv")(y)
    y = layers.BatchNormalization(epsilon=1.001e-5, name="block1_2_bn")(y)
    y = layers.Activation("relu", name="block1_2_relu")(y)
    y = layers.Conv2D(32, 1, name="block1_3_conv")(y)
    y = layers.BatchNormalization(epsilon=1.001e-5, name="block1_3_bn")(y)
    y = layers.Add(name="block1_add")([shortcut, y])
    y = layers.Activation("relu", name="block1_out")(y)
    y = layers.GlobalAveragePooling2D(name="avg_pool")(y)
    return keras.Model(inputs, layers.Dense(10, name="logits")(y), name="resnet_block")


# Family -> models (the first is the default run's), keyword arguments, smallest input size accepted.
FAMILIES = {
    "ConvNeXt": (("ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge"), {}, 32),
    "DenseNet": (("DenseNet121", "DenseNet169", "DenseNet201"), {}, 32),
    "EfficientNet": (tuple(f"EfficientNetB{i}" for i in range(8)), {}, 32),
    "EfficientNetV2": (("EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
                        "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"), {}, 32),
    "InceptionResNetV2": (("InceptionResNetV2",), {}, 75),
    "InceptionV3": (("InceptionV3",), {}, 75),
    "MobileNet": (("MobileNet",), dict(alpha=0.25), 32),
    "MobileNetV2": (("MobileNetV2",), {}, 32),  # alpha 0.35 (application's default here)
    "MobileNetV3": (("MobileNetV3Small", "MobileNetV3Large"), {}, 32),
    "NASNet": (("NASNetMobile", "NASNetLarge"), {}, 32),
    "ResNet": (("ResNet50", "ResNet101", "ResNet152"), {}, 32),
    "ResNetV2": (("ResNet50V2", "ResNet101V2", "ResNet152V2"), {}, 32),
    "VGG": (("VGG16", "VGG19"), {}, 64),  # (at 32 px on [-1, 1] its random-weight logits are below 1e-3)
    "Xception": (("Xception",), {}, 71),
}


def application(name: str, size: int = 64, **kwargs):
    if name == "MobileNetV2":
        kwargs.setdefault("alpha", 0.35)
    build = getattr(keras.applications, name)
    return build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None, **kwargs)


# Families whose models preprocess raw 0-255 pixels themselves (include_preprocessing): fed pixels, not [-1, 1].
RAW_PIXELS = ("ConvNeXt", "EfficientNet", "EfficientNetV2", "MobileNetV3")
# Families fed mean-subtracted pixels (-127.5 to 127.5), as their "caffe" preprocess_input gives: VGG has no
# BatchNormalization to undo the input's scale, and on [-1, 1] a random-weight VGG19's logits are ~3e-4.
CAFFE_PIXELS = ("VGG",)


def _pixels(family: str) -> tuple[float, float]:
    """(scale, offset) taking [-1, 1] images to the family's input range."""
    return (127.5, 127.5) if family in RAW_PIXELS else (127.5, 0.0) if family in CAFFE_PIXELS else (1.0, 0.0)


def _architectures() -> dict:
    """name -> (builder, image size, (pixel scale, offset)): the smallest model of each family at its smallest
    input (the default run), then every other model at 64 px at least (NASNetLarge only takes 331 px)."""
    table = {"resnet_block": (resnet_block, 32, (1.0, 0.0))}
    for family, (names, kwargs, smallest) in FAMILIES.items():
        for i, name in enumerate(names):
            size = smallest if i == 0 else 331 if name == "NASNetLarge" else max(smallest, 64)
            table[name] = (lambda n=name, s=size, k=kwargs: application(n, s, **k), size, _pixels(family))
    return table


ARCHITECTURES = _architectures()
FIRST_OF_FAMILY = [names[0] for names, _, _ in FAMILIES.values()]
NO_CONV_ACTIVATION = ("ConvNeXt",)  # a LayerNormalization follows every convolution: no activation to fuse
FULL = ("resnet_block", "MobileNetV2")  # the default run also copies these back and builds their inference copy


def images_for(name: str, n: int = N_IMAGES, size: int | None = None) -> np.ndarray:
    _, default_size, (scale, offset) = ARCHITECTURES[name]
    x = cifar_images(size or default_size, n)
    return x if scale == 1.0 else x * scale + offset


def params(default) -> list:
    return [pytest.param(name, marks=() if name in default else pytest.mark.slow) for name in ARCHITECTURES]


@pytest.fixture(scope="module")
def architecture(request):
    build = ARCHITECTURES[request.param][0]
    keras.utils.set_random_seed(0)
    model = build()
    calibrate_batchnorm(model, images_for(request.param, 16))  # (VGG and ConvNeXt have none)
    return request.param, model, convert(model), images_for(request.param)


def assert_logits_match(model, twin, x, label, reference=None):
    (report,) = compare(model, twin, [x], reference)
    print(f"{label}: max |Keras - twin| = {report['max_abs_diff']:.3g}, tolerance {report['tolerance']:.3g} "
          f"(twin's float32 error {report['twin_float32_error']:.3g}), largest |logit| {report['max_abs_output']:.3g}")
    assert report["max_abs_output"] > 1e-3, "logits are ~0: the comparison would prove nothing"
    assert within(report)


@pytest.mark.parametrize("architecture", params(("resnet_block", *FIRST_OF_FAMILY)), indirect=True)
def test_logits_match_keras(architecture):
    name, model, twin, x = architecture
    assert_logits_match(model, twin, x, name)


# The layer-by-layer check in the default run: the smallest EfficientNet (the family whose large models are chaotic
# end to end) and the FULL ones; every other model is slow.
LAYERWISE = ("EfficientNetB0", *FULL)


@pytest.mark.parametrize("architecture", params(LAYERWISE), indirect=True)
def test_each_layer_matches_keras(architecture):
    """Every Keras call, run in the twin on Keras's own inputs to it, matches Keras's output of it under the rule:
    meaningful where the end-to-end check is not (EfficientNetB5/B7/V2M/V2L: chaotic in float32, their
    end-to-end tolerance is 0.4-4x their largest logit)."""
    name, model, twin, x = architecture
    ext = extract_graph(model)
    report = compare_layers(model, twin, [x], ext)
    assert len(report) >= len(ext.sequence) - 1  # a call per Keras call (a channels-first Flatten is left out)
    summary = summarize(report, N_IMAGES)
    worst = summary["worst"]
    print(f"{name}: {summary['checked']} calls, worst {worst['keras_path']} ({worst['keras_class']}) "
          f"{worst['max_abs_diff']:.3g} vs tolerance {worst['tolerance']:.3g}")
    assert summary["passed"], summary["failed"]
    assert max(r["max_abs_output"] for r in report) > 1e-3


@pytest.mark.parametrize("architecture", ["EfficientNetB0"], indirect=True)
def test_each_layer_check_names_a_wrong_layer(architecture):
    """One BatchNormalization's moving variance off by 0.1% in the twin (a conversion mistake that, on EfficientNetB7,
    the end-to-end rule accepts): the layer-by-layer check fails at that layer and no other."""
    name, model, twin, x = architecture
    variance = twin.block2b_project_bn.running_var
    right = variance.clone()
    try:
        variance.mul_(1.001)
        failed = summarize(compare_layers(model, twin, [x], extract_graph(model)), N_IMAGES)["failed"]
    finally:
        variance.copy_(right)
    assert [(r["keras_path"], r["keras_class"]) for r in failed] == [("block2b_project_bn", "BatchNormalization")]


@pytest.mark.parametrize("architecture", params(FULL), indirect=True)
def test_weights_copy_back_to_keras(architecture):
    """Fine-tune in PyTorch (here: a perturbation of every parameter and BN statistic), check in Keras."""
    name, model, twin, x = architecture
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in twin.state_dict(keep_vars=True).items():
            # (a parameter Keras does not have, e.g. BN's weight when scale=False, is frozen: not moved)
            if (isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad) or \
                    key.endswith(("running_mean", "running_var")):
                tensor.mul_(1 + 0.05 * torch.randn(tensor.shape, generator=generator))
    copy_weights_to_keras(twin, model)
    assert_logits_match(model, twin, x, f"{name} after copy back")


@pytest.mark.parametrize("architecture", params(FULL), indirect=True)
def test_inference_copy_matches(architecture):
    """prepare_for_inference runs every 2-D convolution as one oneDNN call with the BN after it folded in (fewer
    modules) and its activation fused, on a copy (the twin keeps its BNs, convolutions and layout); same logits
    within the same tolerance, and the plain BN-folded, channels-last copy (``onednn=False``) too."""
    name, model, twin, x = architecture
    fast = prepare_for_inference(twin)
    batch_norms = [m for m in twin.modules() if isinstance(m, BatchNorm)]
    assert not any(isinstance(m, (BatchNorm, Conv)) for m in fast.modules())
    assert len([m for m in fast.modules() if isinstance(m, ScaleShift)]) < max(len(batch_norms), 1)
    if not name.startswith(NO_CONV_ACTIVATION):
        assert any(isinstance(m, OneDNNConv2d) and m.post_op[0] != "none" for m in fast.modules())
    assert all(m.weight.is_contiguous() for m in twin.modules() if isinstance(m, Conv))
    assert_logits_match(model, fast, x, f"{name} prepared for inference", reference=twin)
    plain = prepare_for_inference(twin, onednn=False)
    convs = [m for m in plain.modules() if isinstance(m, Conv) and m.weight.dim() == 4]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert_logits_match(model, plain, x, f"{name} BN-folded, channels-last", reference=twin)


def _in_float64(build):
    """``build()`` with Keras computing in float64 (every layer's dtype policy), the process left in float32."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        return build()
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("name, size", [pytest.param("resnet_block", None),
                                        pytest.param("InceptionV3", None, marks=pytest.mark.slow),
                                        pytest.param("EfficientNetV2B0", 64, marks=pytest.mark.slow)])
def test_float32_differences_are_summation_order(name, size):
    """Keras float32 and the twin float32 against Keras float64 (same weights): the twin in float64 matches Keras
    in float64 to 1e-9 of the largest logit (measured ~1e-12: the conversion is exact), and the twin's float32
    error is no larger than twice Keras's own (measured 0.6-0.95x), the premise of keras_ref.tolerance's rule.

    EfficientNetV2B0 at 64 px, as docs/parity.md measured it: at 32 px its random weights are chaotic (the errors
    grow 1e3- to 1e4-fold from the stem to the logits, Keras's to 2e-4 of the largest logit, the twin's to 3e-3),
    and the ratio of two amplified roundings says nothing about either framework's rounding."""
    build = ARCHITECTURES[name][0] if size is None else lambda: application(name, size)
    keras.utils.set_random_seed(0)
    model = build()
    calibrate_batchnorm(model, images_for(name, 16, size))
    model64 = _in_float64(build)
    model64.set_weights([w.astype("float64") for w in model.get_weights()])
    x = images_for(name, size=size)
    keras32 = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)
    keras64 = keras.ops.convert_to_numpy(model64(x.astype(np.float64), training=False))
    assert keras64.dtype == np.float64
    twin = convert(model)
    with torch.no_grad():
        twin32 = from_twin_output(twin(to_twin_input(x))).astype(np.float64)
        twin64 = from_twin_output(float64_twin(twin)(to_twin_input(x).double()))
    scale = max(1.0, float(np.abs(keras64).max()))
    errors = {k: max_abs(v, keras64) for k, v in dict(keras32=keras32, twin32=twin32, twin64=twin64).items()}
    print(f"{name}: largest |logit| {scale:.3g}, max |. - Keras float64|: " +
          ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))
    assert errors["twin64"] <= 1e-9 * scale
    assert errors["twin32"] <= 2 * errors["keras32"] + ATOL * scale
