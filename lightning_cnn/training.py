"""Train a documented model with its recipe under Lightning, evaluate it, and write the run's outputs.

``scripts/train.py`` is the command-line face of ``run``; reproduction and cross-validation call ``run`` too.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar

from .atomic import write_text
from .callbacks import EpochHistory
from .datamodule import ArrayDataModule
from .errors import UserError
from .module import KerasRecipeModule
from .speed import Speed
from .pretrained import find_vgg16_weights, load_vgg16_features
from .specs import DEFAULT_MODEL, get_spec, with_train_images
from .summary import summary


class UsageError(ValueError, UserError):
    """A bad command-line choice; scripts print it as one line and exit 2."""


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    seed: int = 0
    data_dir: str | None = None
    out: str | None = None  # None: runs/<model>
    fast_dev_run: bool = False
    resume: str | None = None
    metrics_json: str | None = None
    init: str = "keras"
    compile: bool = False  # torch.compile the network
    steps_per_execution: int = 1  # optimizer steps per Lightning step (Keras's compile argument of that name)
    train_images: str | None = None  # None: the recipe's training subset; "all" or a number overrides it
    weights: str = "auto"  # VGG16 transfer model: ImageNet weights file, "auto" (search caches) or "none"
    allow_partial_test: bool = False
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    limit_test_batches: float | None = None
    verbose: bool = True
    extra: dict = field(default_factory=dict)


def check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--accelerator {accelerator} was requested but no CUDA GPU is visible to PyTorch "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --accelerator cpu or auto"
        )


def _devices(value: str):
    return int(value) if str(value).isdigit() else value


def run(config: RunConfig) -> dict:
    """Fit with the recipe, test the final model, write checkpoint/CSV/PNG/JSON; returns the final metrics."""
    spec = get_spec(config.model)
    try:
        spec = with_train_images(spec, config.train_images)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_accelerator(config.accelerator)
    if config.steps_per_execution < 1:
        raise UsageError(f"--steps-per-execution {config.steps_per_execution}: use 1 or more batches per step")
    if config.resume and not Path(config.resume).is_file():
        raise UsageError(f"--resume {config.resume}: no such checkpoint file")
    L.seed_everything(config.seed, workers=True, verbose=False)
    epochs = config.epochs or spec.recipe.epochs
    out = Path(config.out or Path("runs") / spec.id)

    data = ArrayDataModule.from_spec(spec, data_dir=config.data_dir, seed=config.seed,
                                     allow_partial_test=config.allow_partial_test,
                                     steps_per_execution=config.steps_per_execution,
                                     **({"batch_size": config.batch_size} if config.batch_size else {}))
    data.prepare_data()  # resolve (and validate) the data before any process is started
    module = KerasRecipeModule(spec.id, init=config.init, seed=config.seed, compiled=config.compile,
                               steps_per_execution=config.steps_per_execution)
    if spec.layers[0][0] == "vgg16_features":
        weights = find_vgg16_weights(config.weights)  # raises WeightsNotFoundError saying where to put them
        if weights is not None:
            load_vgg16_features(module.model, weights)
        if config.verbose:
            source = f"ImageNet weights from {weights}" if weights else "from scratch (--weights none)"
            print(f"VGG16 features: {source}")
    has_val = bool(spec.recipe.validation_split or spec.recipe.validation_test_head)
    history = EpochHistory(out, total_epochs=epochs)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_loss" if has_val
                                 else "train_loss", mode="min", save_last=True, enable_version_counter=False)
    # A bar redrawn every step costs more than a small model's step on CPU: redraw every 25 steps.
    callbacks = [history, *Speed().trainer_callbacks(config.accelerator), TQDMProgressBar(refresh_rate=25), checkpoint]
    if spec.recipe.early_stopping_patience and has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=spec.recipe.early_stopping_patience))
    trainer = L.Trainer(
        accelerator=config.accelerator, devices=_devices(config.devices), strategy=config.strategy,
        precision=config.precision, max_epochs=epochs, fast_dev_run=config.fast_dev_run,
        callbacks=callbacks, logger=False, num_sanity_val_steps=0, use_distributed_sampler=False,
        enable_model_summary=False, default_root_dir=out,
        **{k: v for k, v in (("limit_train_batches", config.limit_train_batches),
                             ("limit_val_batches", config.limit_val_batches),
                             ("limit_test_batches", config.limit_test_batches)) if v is not None},
    )
    if trainer.is_global_zero and config.verbose:
        channels, (height, width) = spec.input_shape[2], spec.input_shape[:2]
        print(summary(module.model, (channels, height, width)))
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=config.resume)
    fit_seconds = time.perf_counter() - started
    train_samples = int(trainer.callback_metrics.get("train_samples", torch.tensor(0)).item())  # before test resets
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    result = {
        "model": spec.id,
        "framework": "lightning",
        "seed": config.seed,
        "epochs_run": len(history.rows),
        "test_loss": test["test_loss"],
        "test_accuracy": test["test_acc"],
        "test_samples": int(test["test_samples"]),
        "test_is_partial": bool(getattr(data, "test_is_partial", False)),
        "history": history.history(),
        "seconds_per_epoch": [row["seconds"] for row in history.rows],
        "fit_seconds": round(fit_seconds, 2),
        "train_samples_last_epoch": train_samples,
        "best_checkpoint": str(out / "checkpoints" / "best.ckpt"),
        "config": {k: v for k, v in asdict(config).items() if k != "extra"},
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, "
                   + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
    if trainer.is_global_zero:
        if config.verbose:
            partial = " (first 1,000 test images)" if result["test_is_partial"] else ""
            print(f"Test loss: {result['test_loss']:.4f} - Test accuracy: {100 * result['test_accuracy']:.2f}%"
                  f"{partial}", flush=True)
        if config.metrics_json:
            write_text(config.metrics_json, json.dumps(result, indent=2) + "\n")
    return result
