"""``train.py --keras-model PATH``: train a user's Keras model as its PyTorch twin, with its own compile config.

PATH is a converted folder (``python -m keras_ref.convert``; loads without TensorFlow) or a ``.keras`` file
(converted on the fly: needs the ``[keras]`` extra). The data set's images arrive as x/255 in NCHW; the model's
Keras input must be (H, W, C) of the data set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from .callbacks import EpochHistory
from .data import DATASETS
from .datamodule import ArrayDataModule
from .errors import UserError
from .keras_compile import CompiledTwinModule, KerasCompile

# (H, W, C) of each data set's images, as a Keras model's Input sees them.
DATASET_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NUM_CLASSES = 10  # all three


class KerasModelError(ValueError, UserError):
    """A --keras-model that cannot be trained on the chosen data set (shape, file kind, missing extra)."""


def load_twin(path: str | Path) -> tuple[nn.Module, KerasCompile, tuple]:
    """(twin, its compile config, its Keras input shape (H, W, C)) from a converted folder or a ``.keras`` file."""
    path = Path(path)
    if path.is_dir():
        from .converted import load_converted

        twin = load_converted(path)
        compile_file = path / "compile.json"
        config = json.loads(compile_file.read_text()) if compile_file.is_file() else None
        if len(twin.input_specs) != 1:
            raise KerasModelError(f"--keras-model {path}: the model has {len(twin.input_specs)} inputs; training "
                                  "on an image data set needs exactly one")
        return twin, KerasCompile.from_config(config), tuple(twin.input_specs[0]["shape"][1:])
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
    keras_model = load_keras_model(path)
    if len(keras_model.inputs) != 1:
        raise KerasModelError(f"--keras-model {path}: the model has {len(keras_model.inputs)} inputs; training on "
                              "an image data set needs exactly one")
    twin = convert(keras_model)
    shape = tuple(keras_model.inputs[0].shape[1:])
    return twin, KerasCompile.from_config(compile_config_of_file(path)), shape


def check_input_shape(shape: tuple, dataset: str, where: str) -> None:
    expected = DATASET_SHAPES[dataset]
    if tuple(shape) != expected:
        raise KerasModelError(f"{where}: the model's input shape is {tuple(shape)} (H, W, C) but {dataset} images "
                              f"are {expected}; pick the data set the model was built for, or rebuild the model "
                              f"with keras.Input(shape={expected})")


def run_keras_model(config, keras_model: str, dataset: str) -> dict:
    """Fit the twin of ``keras_model`` on ``dataset`` with its compile config and test it; returns the metrics.

    ``config`` is a ``training.RunConfig`` (accelerator, devices, precision, epochs, batch size, seed, out, ...);
    epochs default to 1 and the batch size to Keras's 32. Checkpoints and the history go to ``config.out``.
    """
    from .training import check_accelerator, make_trainer  # the documented models' runner shares these

    if dataset not in DATASETS:
        raise KerasModelError(f"--dataset {dataset!r}: use one of {', '.join(DATASET_SHAPES)}")
    check_accelerator(config.accelerator)
    twin, compile_config, shape = load_twin(keras_model)
    check_input_shape(shape, dataset, f"--keras-model {keras_model}")
    L.seed_everything(config.seed, workers=True, verbose=False)
    out = Path(config.out or Path("runs") / Path(keras_model).stem)
    epochs = config.epochs or 1
    data = ArrayDataModule(dataset, data_dir=config.data_dir, batch_size=config.batch_size or 32, seed=config.seed,
                           allow_partial_test=config.allow_partial_test)
    data.prepare_data()
    module = CompiledTwinModule(twin, compile_config, NUM_CLASSES)
    history = EpochHistory(out, total_epochs=epochs)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="train_loss", mode="min",
                                 save_last=True, enable_version_counter=False)
    trainer = make_trainer(
        accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
        precision=config.precision, callbacks=[history, checkpoint], progress_bar=config.progress_bar,
        max_epochs=epochs, fast_dev_run=config.fast_dev_run, default_root_dir=out,
        **{k: v for k, v in (("limit_train_batches", config.limit_train_batches),
                             ("limit_test_batches", config.limit_test_batches)) if v is not None})
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=config.resume)
    fit_seconds = time.perf_counter() - started
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    return {
        "keras_model": str(keras_model), "dataset": dataset, "framework": "lightning", "seed": config.seed,
        "loss": compile_config.loss, "optimizer": compile_config.optimizer,
        "epochs_run": len(history.rows), "history": history.history(),
        "test_loss": test["test_loss"], "test_accuracy": test["test_acc"], "test_samples": int(test["test_samples"]),
        "test_is_partial": bool(data.test_is_partial),
        "fit_seconds": round(fit_seconds, 2), "last_checkpoint": str(out / "checkpoints" / "last.ckpt"),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
