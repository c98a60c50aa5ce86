"""keras_ref.convert on real architectures: keras.applications models and a ResNet bottleneck block.

All ``weights=None`` with BatchNormalization statistics and affine parameters set to non-trivial random values,
``classifier_activation=None`` so the comparison is on logits, fed real CIFAR-10 test images resized (bilinear)
to the input size. Tolerance: keras_ref.tolerance's rule (4 x the twin's own float32 error against its float64
run + 1e-6 x max(1, the largest logit); the frameworks' kernels sum in different orders; a wrong layout or padding
is O(1)).
Then the twin is perturbed and copied back into Keras, which must then match it within the same tolerance.
MobileNetV2-0.35 and the ResNet block run by default; the large models are marked slow. Each Keras model is built
once per module (construction is the slow part).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from keras import layers
from torch.nn import BatchNorm2d as BatchNorm, Conv2d as Conv  # the twin's stock modules

from keras_ref.convert import compare, convert, copy_weights_to_keras
from keras_ref.tolerance import within
from lightning_cnn.converted import prepare_for_inference
from lightning_cnn.converted.inference import OneDNNConv2d, ScaleShift

from .conftest import _test_split

pytestmark = pytest.mark.keras

N_IMAGES = 4


def cifar_images(size: int, n: int = N_IMAGES) -> np.ndarray:
    """The first ``n`` real CIFAR-10 test images scaled to [-1, 1] and resized to ``size`` x ``size``."""
    x, _ = _test_split("cifar10")
    x = x[:n].astype(np.float32) / 127.5 - 1.0
    if size != x.shape[1]:
        x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size), interpolation="bilinear"))
    return np.ascontiguousarray(x, dtype=np.float32)


def set_batchnorm_statistics(model, seed: int = 0):
    """Non-trivial BN: moving mean ~ N(0, 0.1), variance U(0.5, 1.5), gamma U(0.8, 1.2), beta N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    draws = {"moving_mean": lambda s: rng.normal(0, 0.1, s), "moving_variance": lambda s: rng.uniform(0.5, 1.5, s),
             "gamma": lambda s: rng.uniform(0.8, 1.2, s), "beta": lambda s: rng.normal(0, 0.1, s)}
    count = 0
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            for w in layer.weights:
                w.assign(draws[w.name](tuple(w.shape)).astype("float32"))
            count += 1
    return count


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


def application(name: str, size: int = 64):
    build = getattr(keras.applications, name)
    kwargs = dict(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    if name == "MobileNetV2":
        kwargs["alpha"] = 0.35
    return build(**kwargs)


# name -> (builder, image size); MobileNetV2-0.35 and the ResNet block are the default-run pair.
ARCHITECTURES = {
    "resnet_block": (resnet_block, 32),
    "MobileNetV2": (lambda: application("MobileNetV2"), 64),
    "ResNet50": (lambda: application("ResNet50"), 64),
    "EfficientNetB0": (lambda: application("EfficientNetB0"), 64),
    "VGG16": (lambda: application("VGG16"), 64),
    "DenseNet121": (lambda: application("DenseNet121"), 64),
    "NASNetMobile": (lambda: application("NASNetMobile"), 64),
}
DEFAULT = ("resnet_block", "MobileNetV2")


@pytest.fixture(scope="module", params=[pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow)
                                        for name in ARCHITECTURES])
def architecture(request):
    build, size = ARCHITECTURES[request.param]
    keras.utils.set_random_seed(0)
    model = build()
    assert set_batchnorm_statistics(model) > 0 or request.param == "VGG16"  # VGG16 has no BN
    return request.param, model, convert(model), cifar_images(size)


def assert_logits_match(model, twin, x, label):
    (report,) = compare(model, twin, [x])
    print(f"{label}: max |Keras - twin| = {report['max_abs_diff']:.3g}, tolerance {report['tolerance']:.3g} "
          f"(twin's float32 error {report['twin_float32_error']:.3g}), largest |logit| {report['max_abs_output']:.3g}")
    assert report["max_abs_output"] > 1e-3, "logits are ~0: the comparison would prove nothing"
    assert within(report)


def test_logits_match_keras(architecture):
    name, model, twin, x = architecture
    assert_logits_match(model, twin, x, name)


def test_weights_copy_back_to_keras(architecture):
    """Fine-tune in PyTorch (here: a perturbation of every parameter and BN statistic), check in Keras."""
    name, model, twin, x = architecture
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in twin.state_dict(keep_vars=True).items():
            if isinstance(tensor, torch.nn.Parameter) or key.endswith(("running_mean", "running_var")):
                tensor.mul_(1 + 0.05 * torch.randn(tensor.shape, generator=generator))
    copy_weights_to_keras(twin, model)
    assert_logits_match(model, twin, x, f"{name} after copy back")


def test_inference_copy_matches(architecture):
    """prepare_for_inference runs every 2-D convolution as one oneDNN call with the BN after it folded in (fewer
    modules) and its activation fused, on a copy (the twin keeps its BNs, convolutions and layout); same logits
    within the same tolerance, and the plain BN-folded, channels-last copy (``onednn=False``) too."""
    name, model, twin, x = architecture
    fast = prepare_for_inference(twin)
    batch_norms = [m for m in twin.modules() if isinstance(m, BatchNorm)]
    assert not any(isinstance(m, (BatchNorm, Conv)) for m in fast.modules())
    assert len([m for m in fast.modules() if isinstance(m, ScaleShift)]) < max(len(batch_norms), 1)
    assert any(isinstance(m, OneDNNConv2d) and m.post_op[0] != "none" for m in fast.modules())
    assert all(m.weight.is_contiguous() for m in twin.modules() if isinstance(m, Conv))
    assert_logits_match(model, fast, x, f"{name} prepared for inference")
    plain = prepare_for_inference(twin, onednn=False)
    convs = [m for m in plain.modules() if isinstance(m, Conv) and m.weight.dim() == 4]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert_logits_match(model, plain, x, f"{name} BN-folded, channels-last")
