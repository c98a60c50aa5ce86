"""Class probabilities from a trained model (``trained.load_trained``), for the user's own images or for test-set
images, each prepared the way its run's data was: the same image shape, color mode and pixel scaling. MNIST and
Fashion-MNIST models get drawings inverted when the background is light (their digits are white on black).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import preprocess
from .speed.cpu_tuning import freed_memory_retained
from .trained import TrainedModel

WHITE_ON_BLACK = ("mnist", "fashion_mnist")  # data sets whose images are light on dark: drawings get inverted


def load_image(path: str | Path, trained: TrainedModel, invert: str = "auto") -> np.ndarray:
    """One image file as the uint8 (H, W, C) array the model's run was fed: its image shape and color mode.

    Decoded as ``--data`` folders are (``user_data.image_folder.read_image``): an image declaring more pixels than
    PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: a small file that would decode to gigabytes) is refused
    from its header, before anything is decoded. ``invert``: "yes", "no", or "auto" (a light background, for a
    model trained on MNIST or Fashion-MNIST)."""
    from .user_data.image_folder import UnreadableImage, read_image
    from .user_data.model_inputs import IMAGE_MODES

    height, width, channels = trained.image_shape
    try:
        array = read_image(str(path), height, width, IMAGE_MODES[channels])
    except UnreadableImage as error:
        raise ValueError(f"cannot read image {path}: {error.reason}") from None
    if invert == "yes" or (invert == "auto" and trained.dataset in WHITE_ON_BLACK and array.mean() > 127):
        array = 255 - array
    return array


@torch.no_grad()
def predict_proba(model: nn.Module, preprocessing: str, images_uint8: np.ndarray, batch_size: int = 1000,
                  speed=None, final_activation: str | None = "softmax") -> np.ndarray:
    """Probabilities (N, classes) for uint8 images (N, H, W[, C]) prepared by ``preprocessing`` (a
    ``data.preprocess`` kind), computed in eval mode on the model's device, ``batch_size`` images at a time (so a
    whole test set never sits in memory as floats). ``final_activation`` turns the outputs into probabilities
    ("softmax", "sigmoid"; None: they already are, a Keras model ending in softmax).
    ``speed`` (a ``lightning_cnn.speed.Speed``): run ``speed.inference_model(model)`` instead (lightning-cnn-predict
    passes ``Speed()``: the oneDNN inference copy on a CPU, run with freed memory retained, ``cpu_tuning``); None,
    as reported results do: ``model`` itself."""
    device = next(model.parameters()).device
    model = model.eval() if speed is None else speed.inference_model(model.eval())
    activation = {"softmax": lambda t: torch.softmax(t, dim=1), "sigmoid": torch.sigmoid,
                  None: lambda t: t}[final_activation]
    chunks = []
    with freed_memory_retained() if speed is not None and speed.cpu_tuning and device.type == "cpu" else nullcontext():
        for start in range(0, len(images_uint8), batch_size):
            x = preprocess(images_uint8[start:start + batch_size], preprocessing)
            x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
            with torch.inference_mode():
                chunks.append(activation(model(x).float()).cpu())
    return torch.cat(chunks).numpy()
