"""What a run trains and on what data: the seam between a ``RunConfig`` and the run core (``training.fit_and_test``).

``run_model(config)`` is the network and its LightningModule: a documented model built from its spec, or the
PyTorch twin of the user's Keras model (``config.keras_model``: a folder from ``python -m keras_ref.convert``,
loaded without TensorFlow, or a ``.keras`` file converted on the fly, which needs the ``[keras]`` extra), with what
it expects of the data: its input shape and its number of outputs.
``data_module_for(config, model)`` is where the data module is chosen; every data source is one branch there:
``--data PATH`` (the user's folder of images or .npz, ``user_data``), else a built-in data set.
The run core checks that the data fits the model (``check_data_fits``) and trains whatever the two return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from ..datamodule import DATASET_SHAPES, ArrayDataModule
from ..errors import CheckpointError, UsageError
from ..recipes.keras_compile import TWIN_CHECKPOINT_KEY
from ..specs import ModelSpec, get_spec, with_train_images
from ..trained import (DATA_RECORD_KEY, KerasModelError, documented_model, load_twin, read_checkpoint,
                       twin_state)
from ..user_data import UserDataError
from ..user_data.model_inputs import ModelInputs

TWIN_EPOCHS, TWIN_BATCH_SIZE = 1, 32  # a --keras-model run's defaults: one epoch, Keras's fit() batch size


@dataclass
class RunModel:
    """The module a run trains and what it expects: ``input_shape`` (H, W, C) as its Keras input (a twin's first
    input: any rank with --data), ``num_classes`` its output width, ``inputs`` all of its inputs (what --data
    needs). ``spec`` is the documented model's, None for a Keras model's twin."""

    name: str  # the run's default folder name: the model id, or the Keras model's file name
    module: L.LightningModule
    input_shape: tuple
    num_classes: int
    epochs: int  # when --epochs is not given
    batch_size: int  # when --batch-size is not given
    inputs: ModelInputs
    spec: ModelSpec | None = None
    report: dict = field(default_factory=dict)  # what the metrics say the model was


def run_model(config) -> RunModel:
    """The model of ``config`` (a ``training.RunConfig``), built and checked, ready to train."""
    if config.keras_model:
        return _twin_model(config)
    from ..recipes.module import KerasRecipeModule

    spec = documented_spec(config)
    module = KerasRecipeModule(spec.id, init=config.init or "keras", seed=config.seed, compiled=config.compile,
                               steps_per_execution=config.steps_per_execution)
    return RunModel(spec.id, module, tuple(spec.input_shape), spec.num_classes, spec.recipe.epochs,
                    spec.recipe.batch_size, ModelInputs.of_spec(spec), spec, {"model": spec.id})


def documented_spec(config) -> ModelSpec:
    """The documented model's spec with ``--train-images`` applied."""
    try:
        return with_train_images(get_spec(config.model), config.train_images)
    except ValueError as error:
        raise UsageError(str(error)) from None


def data_module_for(config, model: RunModel) -> L.LightningDataModule:
    """The data module of the run: THE place a data source is chosen.

    ``--data PATH``: the user's folder of images or .npz (``UserDataModule``), checked against the model's inputs
    and output width as it is read. Else ``--dataset mnist|fashion_mnist|cifar10`` (a documented model's own data
    set when not given; its recipe's batch size, validation and training subset either way). A data module the core
    can train exposes, besides the Lightning hooks: ``prepare_data()`` (resolve and validate, before any process
    starts), ``train_size()`` (images one epoch trains on), ``has_validation``, ``input_shape`` (H, W, C),
    ``num_classes`` and ``test_is_partial``.
    """
    if config.data:
        from ..user_data.datamodule import UserDataModule

        for flag, given in (("--dataset", config.dataset), ("--data-dir", config.data_dir),
                            ("--train-images", config.train_images),
                            ("--allow-partial-test", config.allow_partial_test)):
            if given:
                raise UsageError(f"--data {config.data} and {flag}: {flag} is for the built-in data sets; with "
                                 "your own data, give the samples to train on (--validation-split to hold some "
                                 "out): leave it out")

        return UserDataModule(config.data, model.inputs, batch_size=config.batch_size or model.batch_size,
                              validation_split=config.validation_split, seed=config.seed,
                              image_size=config.image_size, rescale=config.rescale, workers=config.workers,
                              steps_per_execution=config.steps_per_execution)
    if config.validation_split or config.image_size or config.rescale != "auto" or config.workers is not None:
        flags = [flag for flag, given in (("--validation-split", config.validation_split),
                                          ("--image-size", config.image_size),
                                          ("--rescale", config.rescale != "auto"),
                                          ("--workers", config.workers is not None)) if given]
        raise UsageError(f"{', '.join(flags)}: for --data PATH (your own data); the built-in data sets are split "
                         "and scaled as their documents say: leave them out, or give --data")
    _check_image_model(model, config)
    batch = {"batch_size": config.batch_size} if config.batch_size else {}
    common = dict(data_dir=config.data_dir, seed=config.seed, allow_partial_test=config.allow_partial_test,
                  steps_per_execution=config.steps_per_execution, **batch)
    if model.spec is not None:
        return ArrayDataModule.from_spec(model.spec, **common,
                                         **({"dataset": config.dataset} if config.dataset else {}))
    if not config.dataset:
        raise UsageError(f"--keras-model {config.keras_model}: say what to train it on with --dataset "
                         f"({', '.join(DATASET_SHAPES)})")
    subset = None if config.train_images in (None, "all") else _train_images(config.train_images)
    return ArrayDataModule(config.dataset, train_subset=subset, **{"batch_size": TWIN_BATCH_SIZE, **common})


def _train_images(value) -> int:
    if str(value).isdigit() and int(value) > 0:
        return int(value)
    raise UsageError(f"--train-images {value!r}: use a positive number of images or 'all'")


def check_data_fits(model: RunModel, data, where: str) -> None:
    """The data's images have the model's input shape and its classes are the model's outputs, else one line."""
    if tuple(model.input_shape) != tuple(data.input_shape):
        raise UsageError(f"{where}: the model's input shape is {tuple(model.input_shape)} (H, W, C) but the data's "
                         f"images are {tuple(data.input_shape)}; pick data of the model's input shape, or rebuild the "
                         f"model with keras.Input(shape={tuple(data.input_shape)})")
    if model.num_classes != data.num_classes:
        raise UsageError(f"{where}: the model has {model.num_classes} outputs but the data has {data.num_classes} "
                         f"classes; train it on data with {model.num_classes} classes, or give the model's last layer "
                         f"{data.num_classes} units")


# --- a Keras model's twin -------------------------------------------------------------------------------------------


def _twin_model(config) -> RunModel:
    from ..recipes.keras_compile import CompiledTwinModule

    twin, compile_config = load_twin(config.keras_model)
    try:
        inputs = ModelInputs.of_twin(twin)
    except UserDataError as error:
        raise KerasModelError(f"--keras-model {config.keras_model}: {error}") from None
    module = CompiledTwinModule(twin, compile_config, source=str(Path(config.keras_model).resolve()),
                                compiled=config.compile, steps_per_execution=config.steps_per_execution)
    report = {"keras_model": str(config.keras_model), "dataset": config.dataset, "data": config.data,
              "loss": compile_config.loss, "optimizer": compile_config.optimizer}
    return RunModel(Path(config.keras_model).stem, module, inputs.inputs[0].shape, inputs.output_width,
                    TWIN_EPOCHS, TWIN_BATCH_SIZE, inputs, report=report)


def _check_image_model(model: RunModel, config) -> None:
    """A built-in data set feeds one fixed-size (H, W, C) image input."""
    if model.spec is not None:
        return
    specs = model.inputs.inputs
    if len(specs) != 1:
        raise KerasModelError(f"--keras-model {config.keras_model}: the model has {len(specs)} inputs; training on "
                              "a built-in image data set needs exactly one (give your data with --data FILE.npz)")
    if len(specs[0].shape) != 3 or not all(isinstance(d, int) for d in specs[0].shape):
        raise KerasModelError(f"--keras-model {config.keras_model}: the model's input shape {specs[0].shape} is not "
                              "a fixed (H, W, C) image; the built-in data sets are images: give your data with "
                              "--data")


def check_resume_checkpoint(path: str, model: RunModel, data) -> None:
    """``--resume PATH`` holds a checkpoint of this very model (a documented model's for a documented run, this
    Keras model's twin for a --keras-model run), whole and finite, trained on data like ``data`` (the same classes,
    image shape, pixel scaling and data set, as its record says); else one line saying which it is."""
    if not Path(path).is_file():
        raise UsageError(f"--resume {path}: no such checkpoint file")
    checkpoint = read_checkpoint(path)
    if model.spec is not None:
        documented_model(Path(path), checkpoint, model.spec.id)  # the same model, whole and finite, else one line
    else:
        _check_twin_checkpoint(path, checkpoint, model)
    _check_same_data(path, checkpoint.get(DATA_RECORD_KEY), data.trained_on())


def _check_twin_checkpoint(path: str, checkpoint: dict, model: RunModel) -> None:
    """A --keras-model run resumes from a checkpoint of this Keras model's twin, whole and finite."""
    if TWIN_CHECKPOINT_KEY not in checkpoint:
        saved = (checkpoint.get("hyper_parameters") or {}).get("model_id", "a documented model")
        raise CheckpointError(f"--resume {path} is a checkpoint of the documented model {saved!r}, not of a "
                              f"--keras-model twin: resume it with --model {saved} (without --keras-model), or "
                              "pass the twin run's OUT/checkpoints/last.ckpt")
    twin_state(checkpoint, model.module.state_dict(), f"--resume {path}",
               f"--keras-model {model.report['keras_model']}", "pass the checkpoint of a run of this model")


_RECORDED = {"image_shape": "images (H, W, C)", "preprocessing": "pixels scaled as", "dataset": "the data set"}


def _check_same_data(path: str, recorded: dict | None, now: dict) -> None:
    """A resumed run goes on with the data it started with: other classes would silently relabel what it learned,
    another size or pixel scaling would feed it inputs it never saw. A checkpoint from before runs recorded their
    data has nothing to compare."""
    if not isinstance(recorded, dict):
        return
    fix = "resume with the data (and --rescale, --image-size) the run started with, or leave --resume out to start " \
          "a new run"
    before, classes = list(recorded.get("class_names") or []), list(now["class_names"])
    if before != classes:
        gone, new = [c for c in before if c not in classes], [c for c in classes if c not in before]
        difference = "; ".join(part for part in (gone and f"{_few(gone)} only there", new and f"{_few(new)} only here")
                               if part) or "the same classes in another order"
        raise UsageError(f"--resume {path}: its run trained on other classes ({difference}); {fix}")
    for key, what in _RECORDED.items():
        if recorded.get(key) != now[key]:
            shown = [tuple(v) if isinstance(v, list) else v for v in (recorded.get(key), now[key])]
            raise UsageError(f"--resume {path}: its run trained on {what} {shown[0]}, this run's data has "
                             f"{shown[1]}; {fix}")


def _few(names: list) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
