"""Class probabilities from a trained checkpoint, for the user's own images or for test-set images.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a checkpoint
someone sent you cannot run code. Images are prepared the way the documents prepare data: grayscale 28x28 for
MNIST models (inverted when the background is light, since MNIST digits are white on black), 32x32 RGB for CIFAR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import preprocess
from .errors import CheckpointError
from .models import build_model
from .specs import ModelSpec, get_spec


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """The model in a ``scripts/train.py`` checkpoint, in eval mode, without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train.py writes OUT/checkpoints/best.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or file damaged: both mean "not a checkpoint we can trust"
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    try:
        model_id = checkpoint["hyper_parameters"]["model_id"]
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    except (KeyError, TypeError):
        raise CheckpointError(f"{path} is not a lightning_cnn checkpoint (no model_id / state_dict)") from None
    model = build_model(model_id)
    model.load_state_dict(state)
    return model.eval(), get_spec(model_id)


def load_image(path: str | Path, spec: ModelSpec, invert: str = "auto") -> np.ndarray:
    """One image file as the uint8 array the model's dataset uses: (28, 28) grayscale or (32, 32, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = spec.input_shape
    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    array = np.asarray(image, dtype=np.uint8)
    if channels == 1 and (invert == "yes" or (invert == "auto" and array.mean() > 127)):
        array = 255 - array
    return array


@torch.no_grad()
def predict_proba(model: nn.Module, spec: ModelSpec, images_uint8: np.ndarray) -> np.ndarray:
    """Softmax probabilities (N, classes) for uint8 images in the dataset's layout."""
    x = torch.from_numpy(preprocess(images_uint8, spec.preprocessing)).permute(0, 3, 1, 2).contiguous()
    return torch.softmax(model(x), dim=1).numpy()
