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

from ..data import keras_home
from ..errors import UserError

CONVERTED_NAME = "vgg16_notop_imagenet_keras.safetensors"
TORCHVISION_NAME = "vgg16-397923af.pth"
KERAS_NOTOP_NAME = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"  # what keras.applications.VGG16 downloads


class WeightsNotFoundError(FileNotFoundError, UserError):
    pass


def converted_weights_path() -> Path:
    """Where the converter writes by default: ``$LIGHTNING_CNN_HOME`` or ``~/.cache/lightning_cnn``."""
    home = os.environ.get("LIGHTNING_CNN_HOME") or Path.home() / ".cache" / "lightning_cnn"
    return Path(home).expanduser() / CONVERTED_NAME


def torchvision_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_NAME


def keras_weights_path() -> Path:
    """Where ``keras.applications.VGG16(weights="imagenet", include_top=False)`` keeps its download."""
    return keras_home() / "models" / KERAS_NOTOP_NAME


def _cached_weights(framework: str) -> tuple[Path, ...]:
    """The caches searched for each framework's weights file, in order."""
    if framework == "keras":
        return (keras_weights_path(),)
    return (converted_weights_path(), torchvision_weights_path())


def _not_found_hint(framework: str) -> str:
    if framework == "keras":
        return f"pass the path to {KERAS_NOTOP_NAME}, or build VGG16 with random weights by passing none"
    return ("either convert Keras's vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 with `python "
            "scripts/convert_vgg16_weights.py --h5 PATH` (needs the [keras] extra; writes the first file), put "
            "torchvision's vgg16-397923af.pth at the second, pass --weights PATH, or train from scratch with "
            "--weights none")


def find_vgg16_weights(weights: str | os.PathLike | None = "auto", framework: str = "torch") -> Path | None:
    """VGG16 ImageNet weights for ``framework`` ("torch": safetensors or a torchvision checkpoint; "keras": Keras's
    no-top .h5). ``weights``: a file path, ``"none"`` (random weights: returns None) or ``"auto"``/None (search the
    caches: for torch the converter's output, then torchvision's hub cache; for Keras, the Keras cache).
    Raises ``WeightsNotFoundError`` saying where to put them."""
    if framework not in ("torch", "keras"):
        raise ValueError(f"framework must be 'torch' or 'keras', not {framework!r}")
    if weights == "none":
        return None
    if weights not in (None, "auto"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"VGG16 weights file {path} does not exist")
        return path
    cached = _cached_weights(framework)
    for path in cached:
        if path.is_file():
            return path
    raise WeightsNotFoundError(f"no VGG16 ImageNet weights found for cifar10_vgg16_transfer; looked for "
                               f"{' and '.join(map(str, cached))}. {_not_found_hint(framework).capitalize()}")


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
