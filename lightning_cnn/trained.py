"""A trained model read back: a documented model's checkpoint, or a --keras-model twin's (with the Keras model it
was trained from), checked whole and finite, with what predicting needs to know about the data it was trained on.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a checkpoint
someone sent you cannot run code. A twin's architecture comes from its converted folder (read without TensorFlow)
or its ``.keras`` file (converted on the fly, needing the ``[keras]`` extra); no Keras ``Lambda`` code runs.
Every run records its data in its checkpoints (``DATA_RECORD_KEY``, written by ``run.callbacks.DataRecord``): the
class names, the image shape and the pixel preprocessing, so images are predicted as the run's data was fed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import CLASS_NAMES, PREPROCESSING
from .datamodule import ArrayDataModule
from .errors import CheckpointError, UserError
from .nets.models import build_model
from .recipes.keras_compile import TWIN_CHECKPOINT_KEY
from .specs import ModelSpec, UnknownModelError, get_spec, list_models

DATA_RECORD_KEY = "trained_on"  # {"class_names", "image_shape" (H, W, C) or None, "preprocessing", "dataset"}


class KerasModelError(ValueError, UserError):
    """A --keras-model that cannot be used here (file kind, missing extra, inputs, non-finite weights)."""


@dataclass(frozen=True)
class TrainedModel:
    """A trained network (eval mode, NCHW images in) and how its run fed it."""

    network: nn.Module
    class_names: tuple[str, ...]
    image_shape: tuple | None  # (H, W, C) images were given as; None: the model's first input is not an image
    preprocessing: str  # ``data.preprocess``'s kind for 8-bit pixels
    dataset: str | None  # the built-in data set it trained on (what --test-indices reads); None: --data
    final_activation: str | None  # what turns outputs into probabilities: "softmax", "sigmoid", None (they are)


def non_finite_tensors(state: dict) -> list[str]:
    """The names of the floating-point tensors in ``state`` that hold a NaN or an inf (a diverged run's weights)."""
    return [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path`` (tensors and plain containers only), or one line saying why not."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (a run writes OUT/checkpoints/best.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or file damaged: both mean "not a checkpoint we can trust"
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a lightning_cnn checkpoint (no state_dict of a model)")
    return checkpoint


def load_trained(path: str | Path, keras_model: str | Path | None = None) -> TrainedModel:
    """The model in a ``lightning-cnn-train`` checkpoint, documented or twin, ready to predict.

    A twin's architecture is the Keras model its run trained (the path its checkpoint names), or ``keras_model``
    when given (the folder moved, or was converted again); its weights must fit that architecture exactly."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if checkpoint.get(TWIN_CHECKPOINT_KEY):
        return _trained_twin(path, checkpoint, keras_model)
    if keras_model is not None:
        raise CheckpointError(f"{path} is a checkpoint of a documented model, not of a --keras-model twin: "
                              f"leave --keras-model {keras_model} out")
    model, spec = documented_model(path, checkpoint)
    # written before runs recorded their data: what a run of the recipe on its own data set records
    record = checkpoint.get(DATA_RECORD_KEY) or ArrayDataModule.from_spec(spec).trained_on()
    return _with_record(path, model, record, spec.num_classes, "softmax")


def load_checkpoint_model(path: str | Path, model_id: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """The documented model in a ``lightning-cnn-train`` checkpoint, in eval mode.

    The model id comes from the checkpoint's hyper-parameters; ``model_id``, when given, must agree with it. The
    weights must fit that architecture exactly (no missing, extra or reshaped tensors) and be finite: a diverged
    run's NaN weights would otherwise print NaN probabilities as if they were answers.
    """
    path = Path(path)
    return documented_model(path, read_checkpoint(path), model_id)


def documented_model(path: Path, checkpoint: dict, model_id: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """``load_checkpoint_model`` for a checkpoint already read (``read_checkpoint``)."""
    if checkpoint.get(TWIN_CHECKPOINT_KEY):
        raise CheckpointError(f"{path} is a checkpoint of the twin of --keras-model {checkpoint[TWIN_CHECKPOINT_KEY]}, "
                              "not of a documented model: resume it with that --keras-model")
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        saved_id = (checkpoint.get("hyper_parameters") or {}).get("model_id") or _model_fitting(path, state)
    except AttributeError:
        raise CheckpointError(f"{path} is not a lightning_cnn checkpoint (its hyper-parameters are not a "
                              "dict)") from None
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


def _trained_twin(path: Path, checkpoint: dict, keras_model) -> TrainedModel:
    source = Path(keras_model or checkpoint[TWIN_CHECKPOINT_KEY])
    if not source.exists():
        raise CheckpointError(f"{path} holds the twin of {source}, which is not there: pass --keras-model PATH, the "
                              "converted folder or .keras file its run trained")
    twin, compile_config = load_twin(source)
    state = twin_state(checkpoint, {f"network.{k}": v for k, v in twin.state_dict().items()}, path,
                       f"--keras-model {source}", "pass the --keras-model its run trained")
    twin.load_state_dict({k.removeprefix("network."): v for k, v in state.items()})
    record = checkpoint.get(DATA_RECORD_KEY)
    if record is None:
        raise CheckpointError(f"{path} does not record the data its run trained on (a version before prediction "
                              "of twins wrote it): train the twin again, or predict in Python (docs/converting.md)")
    activation = ({"binary_crossentropy": "sigmoid"}.get(compile_config.loss, "softmax")
                  if compile_config.from_logits else None)
    return _with_record(path, twin.eval(), record, None, activation)


def twin_state(checkpoint: dict, expected: dict, path: Path, model: str, fix: str) -> dict:
    """The state_dict of a twin run's checkpoint, when its tensors have the names and shapes of ``expected`` (the
    module's state) and are finite; else one line naming ``model`` (what it was checked against) and ``fix``."""
    state = checkpoint["state_dict"]
    want = {k: tuple(v.shape) for k, v in expected.items()}
    found = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if want != found:
        differing = sorted(set(want) ^ set(found)) or [k for k in want if want[k] != found[k]]
        raise CheckpointError(f"{path} was written for the twin of {checkpoint[TWIN_CHECKPOINT_KEY]}, whose weights "
                              f"do not fit {model} (first difference: {differing[0]}): {fix}")
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}): the run that "
                              "wrote it diverged; use an earlier checkpoint")
    return state


def _with_record(path: Path, network: nn.Module, record, num_classes: int | None, activation) -> TrainedModel:
    """A ``TrainedModel`` from a run's data record, each field checked: the file may have been altered."""
    try:
        names = tuple(record["class_names"])
        shape = None if record["image_shape"] is None else tuple(int(n) for n in record["image_shape"])
        preprocessing, dataset = record["preprocessing"], record["dataset"]
        valid = (all(isinstance(n, str) for n in names) and (shape is None or len(shape) == 3 and min(shape) > 0)
                 and preprocessing in PREPROCESSING and (dataset is None or dataset in CLASS_NAMES)
                 and (num_classes is None or len(names) == num_classes))
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(f"{path}: its record of the data it trained on ({DATA_RECORD_KEY}) is damaged: "
                              "use the checkpoint its run wrote")
    return TrainedModel(network, names, shape, preprocessing, dataset, activation)


def load_twin(path: str | Path) -> tuple[nn.Module, object]:
    """(twin, its ``KerasCompile``) from a converted folder or a ``.keras`` file; weights checked finite (a folder's
    by ``load_converted`` itself), the compile config checked field by field."""
    from .recipes.keras_compile import KerasCompile

    path = Path(path)
    if path.is_dir():
        from .converted import load_converted

        twin = load_converted(path)
        compile_file = path / "compile.json"
        compile_config = KerasCompile.from_file(compile_file) if compile_file.is_file() else KerasCompile()
        return twin, compile_config
    if path.suffix != ".keras" or not path.is_file():
        raise KerasModelError(f"--keras-model {path}: expected a .keras file or a folder written by "
                              "python -m keras_ref.convert")
    try:
        from keras_ref.convert import compile_config_of_file, convert
        from keras_ref.parity import load_keras_model
    except ImportError as error:
        raise KerasModelError(f"--keras-model {path}: converting a .keras file needs TensorFlow and Keras "
                              f"({error}); install the [keras] extra, or convert it once elsewhere with "
                              "python -m keras_ref.convert and pass the folder") from None
    compile_config = KerasCompile.from_config(compile_config_of_file(path), f"{path} (its compile config)")
    twin = convert(load_keras_model(path))
    check_finite_weights(twin, path)
    return twin, compile_config


def check_finite_weights(network: nn.Module, where: str | Path) -> None:
    """Every floating-point weight finite, else one line naming ``where`` and the first tensors: a Keras model that
    had diverged (or a damaged file) would otherwise train on NaN and report ``loss: nan``."""
    bad = non_finite_tensors(network.state_dict())
    if bad:
        raise KerasModelError(f"{where} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}): the Keras model it came from had diverged or the "
                              "file is damaged; convert a model with finite weights")


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
