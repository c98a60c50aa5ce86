"""VGG16 ImageNet weights: Keras h5 -> safetensors (through the parity layer) -> the Lightning model, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import keras_ref
import lightning_cnn
from keras_ref.models import VGG16_NOTOP_FILE
from keras_ref.parity import copy_weights
from lightning_cnn.data import load_dataset, preprocess
from lightning_cnn.nets.pretrained import WeightsNotFoundError, find_vgg16_weights, load_vgg16_features
from tests.test_keras_ref import write_legacy_vgg16_h5

keras = keras_ref.load_tensorflow()  # already loaded by keras_ref.models, after the coexistence guard

pytestmark = pytest.mark.keras


def test_converted_keras_weights_give_the_same_logits_on_real_cifar(tmp_path, data_dir):
    from keras_ref.vgg16_weights import convert_vgg16_weights as convert

    keras.utils.set_random_seed(7)  # stand-in for the ImageNet file, which cannot be downloaded here
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    h5 = tmp_path / VGG16_NOTOP_FILE
    write_legacy_vgg16_h5(h5, source)
    out = tmp_path / "vgg16.safetensors"
    convert(h5, out)

    keras_model = keras_ref.build_model("cifar10_vgg16_transfer", seed=1, weights=h5)
    torch_model = lightning_cnn.build_model("cifar10_vgg16_transfer", seed=1)
    load_vgg16_features(torch_model, find_vgg16_weights(str(out)))
    # The top is not in the file: give both sides the same top weights, then compare on real preprocessed images.
    top = keras_model.layers[-1]
    for keras_dense, torch_dense in ((top.layers[1], torch_model.dense), (top.layers[3], torch_model.dense_1)):
        kernel, bias = keras_dense.get_weights()
        with torch.no_grad():
            torch_dense.weight.copy_(torch.from_numpy(kernel.T))
            torch_dense.bias.copy_(torch.from_numpy(bias))
    _, (x_test, _) = load_dataset("cifar10", data_dir, allow_partial_test=True)
    x = preprocess(x_test[:8], "vgg16_caffe")
    expected = keras_model.predict(x, verbose=0)
    with torch.no_grad():
        got = torch.softmax(torch_model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)), dim=1).numpy()
    # Random conv weights on caffe-scaled inputs: activations stay O(1-100); float32 summation order gives ~1e-7.
    assert np.max(np.abs(got - expected)) <= 1e-5


def test_no_weights_anywhere_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_CNN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match="convert_vgg16_weights.py.*--weights none"):
        find_vgg16_weights("auto")
    assert find_vgg16_weights("none") is None
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        find_vgg16_weights(str(tmp_path / "missing.safetensors"))


def test_torchvision_checkpoint_in_the_hub_cache_is_found_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_CNN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import torchvision

    reference = torchvision.models.vgg16(weights=None)  # torchvision's layout, full model with classifier
    path = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    assert find_vgg16_weights("auto") == path
    model = lightning_cnn.build_model("cifar10_vgg16_transfer")
    load_vgg16_features(model, path)
    for name, tensor in model.features.state_dict().items():
        assert torch.equal(tensor, reference.features.state_dict()[name])
