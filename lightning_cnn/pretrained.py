"""ImageNet weights for the VGG16 transfer model, without TensorFlow.

Two sources, in this order: the safetensors file that ``scripts/convert_vgg16_weights.py`` makes from Keras's
``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (the weights document 003 used), and torchvision's own
VGG16 ImageNet checkpoint in the torch hub cache. safetensors holds tensors only, and the torchvision checkpoint is
read with ``torch.load(weights_only=True)``: neither can run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

CONVERTED_NAME = "vgg16_notop_imagenet_keras.safetensors"
TORCHVISION_NAME = "vgg16-397923af.pth"


class WeightsNotFoundError(FileNotFoundError, UserError):
    pass


def converted_weights_path() -> Path:
    """Where the converter writes by default: ``$LIGHTNING_CNN_HOME`` or ``~/.cache/lightning_cnn``."""
    home = os.environ.get("LIGHTNING_CNN_HOME") or Path.home() / ".cache" / "lightning_cnn"
    return Path(home).expanduser() / CONVERTED_NAME


def torchvision_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_NAME


def find_vgg16_weights(weights: str | None) -> Path | None:
    """``weights``: a file path, ``"none"`` (train from scratch: returns None) or ``"auto"`` (search the caches)."""
    if weights == "none":
        return None
    if weights not in (None, "auto"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"VGG16 weights file {path} does not exist")
        return path
    for path in (converted_weights_path(), torchvision_weights_path()):
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        "no VGG16 ImageNet weights found for cifar10_vgg16_transfer; looked for "
        f"{converted_weights_path()} and {torchvision_weights_path()}. Either convert Keras's "
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 with `python scripts/convert_vgg16_weights.py "
        "--h5 PATH` (needs the [keras] extra; writes the first file), put torchvision's vgg16-397923af.pth at the "
        "second, pass --weights PATH, or train from scratch with --weights none"
    )


def load_vgg16_features(model: nn.Module, path: str | Path) -> None:
    """Load ImageNet conv weights into ``model.features`` (torchvision layout), leaving the top as initialised."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    expected = model.features.state_dict()
    if features.keys() != expected.keys():
        raise ValueError(f"{path} does not hold VGG16 feature weights (features.0.weight … features.28.bias)")
    bad = [k for k in expected if features[k].shape != expected[k].shape]
    if bad:
        raise ValueError(f"{path}: wrong shapes for {', '.join(bad)}")
    model.features.load_state_dict(features)
