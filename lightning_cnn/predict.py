"""Class probabilities from a trained checkpoint, for the user's own images or for test-set images.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a checkpoint
someone sent you cannot run code. Images are prepared the way the documents prepare data: grayscale 28x28 for
MNIST models (inverted when the background is light, since MNIST digits are white on black), 32x32 RGB for CIFAR.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import preprocess
from .errors import CheckpointError
from .nets.models import build_model
from .specs import ModelSpec, UnknownModelError, get_spec, list_models
from .speed.cpu_tuning import freed_memory_retained

TWIN_CHECKPOINT_KEY = "keras_model"  # in a --keras-model twin's checkpoints: the Keras model it was trained from


def non_finite_tensors(state: dict) -> list[str]:
    """The names of the floating-point tensors in ``state`` that hold a NaN or an inf (a diverged run's weights)."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def load_checkpoint_model(path: str | Path, model_id: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model in a ``scripts/train.py`` checkpoint, in eval mode, without unpickling arbitrary objects.

    The model id comes from the checkpoint's hyper-parameters; ``model_id``, when given, must agree with it. The
    weights must fit that architecture exactly (no missing, extra or reshaped tensors) and be finite: a diverged
    run's NaN weights would otherwise print NaN probabilities as if they were answers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train.py writes OUT/checkpoints/best.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or file damaged: both mean "not a checkpoint we can trust"
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
    if isinstance(checkpoint, dict) and checkpoint.get(TWIN_CHECKPOINT_KEY):
        raise CheckpointError(f"{path} is a checkpoint of the twin of --keras-model {checkpoint[TWIN_CHECKPOINT_KEY]}, "
                              "not of a documented model: resume it with that --keras-model")
    try:
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        saved_id = (checkpoint.get("hyper_parameters") or {}).get("model_id") or _model_fitting(path, state)
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path} is not a lightning_cnn checkpoint (no state_dict of a model)") from None
    if model_id is not None and model_id != saved_id:
        raise CheckpointError(f"{path} holds a {saved_id!r} model, not {model_id!r}: pass the checkpoint of a "
                              f"{model_id!r} run, or --model {saved_id}")
    try:
        spec = get_spec(saved_id)
    except UnknownModelError:
        raise CheckpointError(
            f"{path} was written for model {saved_id!r}, which this version does not know (valid ids: "
            f"{', '.join(list_models())}): use a checkpoint of one of them, or the version that wrote it"
        ) from None
    model = build_model(saved_id)
    _check_architecture(path, saved_id, model.state_dict(), state)
    _check_finite(path, state)
    model.load_state_dict(state)
    return model.eval(), spec


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _models_fitting(shapes: dict) -> list[str]:
    return [model_id for model_id in list_models() if _shapes(build_model(model_id).state_dict()) == shapes]


def _model_fitting(path: Path, state: dict) -> str:
    """The model id of a checkpoint without hyper-parameters: the one documented model its weights fit."""
    fits = _models_fitting(_shapes(state)) if state else []
    if len(fits) != 1:
        raise CheckpointError(f"{path} names no model id and its weights fit {len(fits)} documented models "
                              f"({', '.join(fits) or 'none'}): use a checkpoint written by train.py")
    return fits[0]


def _check_architecture(path: Path, model_id: str, expected: dict, found: dict) -> None:
    """Missing, extra or reshaped tensors name the first difference and, when one fits, the model they belong to."""
    want, have = _shapes(expected), _shapes(found)
    if want == have and len(have) == len(found):
        return
    missing = [k for k in want if k not in found]
    extra = [k for k in found if k not in want]
    reshaped = [k for k in want if k in have and want[k] != have[k]]
    if reshaped:
        key = reshaped[0]
        difference = f"{key} is {list(have[key])} in the checkpoint but {list(want[key])} in {model_id}"
    elif missing:
        difference = f"it lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
    else:
        difference = f"it has tensors {model_id} does not: {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
    fits = [other for other in _models_fitting(have) if other != model_id]
    guess = f"; the weights fit {fits[0]!r}" if fits else ""
    raise CheckpointError(f"{path} says model {model_id!r} but its weights do not fit it: {difference}{guess}. "
                          "The file was altered or mixed up; use the checkpoint its run wrote")


def _check_finite(path: Path, state: dict) -> None:
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): "
            "the run that wrote it diverged. Use an earlier checkpoint, or retrain (e.g. a lower learning rate)"
        )


def load_image(path: str | Path, spec: ModelSpec, invert: str = "auto") -> np.ndarray:
    """One image file as the uint8 array the model's dataset uses: (28, 28) grayscale or (32, 32, 3) RGB.

    Decoded as ``--data`` folders are (``user_data.image_folder.read_image``): an image declaring more pixels than
    PIL's ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: a small file that would decode to gigabytes) is refused
    from its header, before anything is decoded."""
    from .user_data.image_folder import UnreadableImage, read_image

    height, width, channels = spec.input_shape
    try:
        array = read_image(str(path), height, width, "L" if channels == 1 else "RGB")
    except UnreadableImage as error:
        raise ValueError(f"cannot read image {path}: {error.reason}") from None
    if channels == 1:
        array = array[:, :, 0]
        if invert == "yes" or (invert == "auto" and array.mean() > 127):
            array = 255 - array
    return array


@torch.no_grad()
def predict_proba(model: nn.Module, spec: ModelSpec, images_uint8: np.ndarray, batch_size: int = 1000,
                  speed=None) -> np.ndarray:
    """Softmax probabilities (N, classes) for uint8 images in the dataset's layout, computed in eval mode on the
    model's device, ``batch_size`` images at a time (so a whole test set never sits in memory as floats).
    ``speed`` (a ``lightning_cnn.speed.Speed``): run ``speed.inference_model(model)`` instead (lightning-cnn-predict
    passes ``Speed()``: the oneDNN inference copy on a CPU, run with freed memory retained, ``cpu_tuning``); None,
    as reported results do: ``model`` itself."""
    device = next(model.parameters()).device
    model = model.eval() if speed is None else speed.inference_model(model.eval())
    chunks = []
    with freed_memory_retained() if speed is not None and speed.cpu_tuning and device.type == "cpu" else nullcontext():
        for start in range(0, len(images_uint8), batch_size):
            x = preprocess(images_uint8[start:start + batch_size], spec.preprocessing)
            x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
            with torch.inference_mode():
                chunks.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(chunks).numpy()
