"""Keras's VGG16 ImageNet weights (no top) as a safetensors file that PyTorch users load without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import lightning_cnn
from lightning_cnn.atomic import atomic_path

from .models import build_model
from .parity import ParityError, copy_weights


def convert_vgg16_weights(h5, out, atol: float = 1e-5, seed: int = 0) -> float:
    """Copy the ``.h5`` weights into the Lightning VGG16 features through the parity layer (HWIO -> OIHW, one
    rule per layer kind) and save them to ``out``, only if both sides then agree on 4 inputs within ``atol``
    (probabilities); returns the largest difference. Raises ``ParityError`` (nothing written) otherwise."""
    from safetensors.torch import save_file

    keras_model = build_model("cifar10_vgg16_transfer", seed=seed, weights=h5)
    torch_model = lightning_cnn.build_model("cifar10_vgg16_transfer", seed=seed)
    copy_weights(keras_model, torch_model)
    x = np.random.default_rng(seed).uniform(-124, 152, (4, 32, 32, 3)).astype("float32")  # caffe-range inputs
    expected = keras_model.predict(x, verbose=0)
    with torch.no_grad():  # the Lightning model returns logits; the Keras model ends in softmax
        got = torch.softmax(torch_model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)), dim=1).numpy()
    diff = float(np.max(np.abs(got - expected)))
    if diff > atol:
        raise ParityError(f"converted weights differ from Keras by {diff:.3g} > {atol:g}; nothing written")
    state = {f"features.{k}": v.contiguous() for k, v in torch_model.features.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"source": Path(h5).name, "converted_by": "lightning_cnn"})
    return diff
