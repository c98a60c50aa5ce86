"""The library API under every command: one Trainer builder and one fit-then-test run of a documented model.

``make_trainer`` is the only place a ``lightning.Trainer`` is configured (training, cross-validation, the
benchmark and the tests all use it), so the run settings and the CPU settings cannot drift apart.
``fit_and_test(RunConfig(...))`` trains a documented model with its recipe, tests the final model and returns
the metrics as a dict; it prints nothing and writes only the run folder (checkpoints, metrics.csv, learning
curves). Printing, JSON files and exit codes belong to ``lightning_cnn.cli``. Messages go to the
``lightning_cnn`` logger, which a command line shows and a library user may leave silent.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from . import run_checks
from .callbacks import EpochHistory, TerminateOnNaN
from .checkpoint_io import AtomicCheckpointIO
from .datamodule import ArrayDataModule
from .errors import Interrupted, UsageError
from .module import KerasRecipeModule
from .predict import load_checkpoint_model
from .pretrained import find_vgg16_weights, load_vgg16_features
from .process_state import preserved_process_state
from .run_lock import run_lock
from .speed import Speed
from .specs import DEFAULT_MODEL, get_spec, with_train_images
from .summary import summary

log = logging.getLogger("lightning_cnn")

# A bar redrawn every step costs more than a small model's step on CPU: redraw every 25 steps.
PROGRESS_REFRESH_STEPS = 25


class ConfigError(UsageError):
    """A run setting that cannot work here (no GPU for accelerator="gpu", a missing checkpoint, ...)."""


@dataclass
class RunConfig:
    """One training run of a documented model; the defaults are the recipe's. Field names match train.py's flags."""

    model: str = DEFAULT_MODEL
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    seed: int = 0
    data_dir: str | None = None  # None: the data layer's lookup ($LIGHTNING_CNN_DATA, Keras cache, download)
    out: str | None = None  # None: runs/<model>
    fast_dev_run: bool = False
    resume: str | None = None
    init: str = "keras"
    compile: bool = False  # torch.compile the network
    steps_per_execution: int = 1  # optimizer steps per Lightning step (Keras's compile argument of that name)
    train_images: str | None = None  # None: the recipe's training subset; "all" or a number overrides it
    weights: str = "auto"  # VGG16 transfer model: ImageNet weights file, "auto" (search caches) or "none"
    allow_partial_test: bool = False
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    limit_test_batches: float | None = None
    progress_bar: bool = True


def check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--accelerator {accelerator} was requested but no CUDA GPU is visible to PyTorch "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --accelerator cpu or auto"
        )


def _devices(value):
    return int(value) if str(value).isdigit() else value


def make_trainer(*, accelerator: str = "auto", devices="auto", strategy: str = "auto", precision: str = "32-true",
                 callbacks: Sequence[Callback] = (), progress_bar: bool = False, speed: Speed | None = None,
                 **settings) -> L.Trainer:
    """A Trainer for this project's modules and loaders: no logger, no sanity validation, no model summary; the
    loaders shard themselves across ranks (``InMemoryLoader``), so no distributed sampler; checkpoints only when a
    checkpoint callback is given; the process settings of ``speed`` (default ``Speed()``: CPU tuning on a CPU
    run); checkpoints written atomically (``AtomicCheckpointIO``). ``settings`` are any other ``lightning.Trainer``
    arguments (``max_epochs``, ``max_steps``, ...)."""
    callbacks = list(callbacks)
    if progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS))
    return L.Trainer(
        accelerator=accelerator, devices=_devices(devices), strategy=strategy, precision=precision,
        callbacks=[*callbacks, *(speed or Speed()).trainer_callbacks(accelerator)], logger=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, enable_model_summary=False,
        enable_progress_bar=progress_bar, plugins=[AtomicCheckpointIO()],
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks), **settings)


def _checked_spec(config: RunConfig):
    spec = get_spec(config.model)
    try:
        spec = with_train_images(spec, config.train_images)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_accelerator(config.accelerator)
    run_checks.check_epochs(config.epochs)
    run_checks.check_steps_per_execution(config.steps_per_execution)
    run_checks.check_precision(config.precision, config.accelerator)
    run_checks.check_devices(config.devices, config.accelerator)
    if config.resume:
        if not Path(config.resume).is_file():
            raise ConfigError(f"--resume {config.resume}: no such checkpoint file")
        load_checkpoint_model(config.resume, spec.id)  # the same model, whole and finite, or a CheckpointError
    return spec


def fit_and_test(config: RunConfig) -> dict:
    """Fit with the recipe, test the final model, write checkpoints, metrics.csv and learning curves into the run
    folder; returns the final metrics, the per-epoch history and what the run was (config, machine, versions).

    The run holds the folder's lock (``run_lock``: a second run with the same ``out`` is refused) and leaves the
    process as it found it (``preserved_process_state``); Ctrl-C raises ``Interrupted`` saying what was kept.
    """
    spec = _checked_spec(config)
    out = Path(config.out or Path("runs") / spec.id)
    with preserved_process_state():
        if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP worker Lightning launched: rank 0 holds the lock
            return _fit_and_test(config, spec, out)
        with run_lock(out):
            return _fit_and_test(config, spec, out)


def _interrupted(trainer: L.Trainer, out: Path) -> Interrupted:
    """Lightning turns Ctrl-C into ``sys.exit(1)`` after a graceful shutdown; say what was kept and how to go on."""
    last = out / "checkpoints" / "last.ckpt"
    where = f"during epoch {trainer.current_epoch + 1} (optimizer step {trainer.global_step})"
    if not last.is_file():
        return Interrupted(f"training stopped {where}, before the first checkpoint; nothing to resume from")
    epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1
    return Interrupted(f"training stopped {where}; {last} holds the run as it was after epoch {epoch}: "
                       f"continue with --resume {last}")


def _fit_and_test(config: RunConfig, spec, out: Path) -> dict:
    L.seed_everything(config.seed, workers=True, verbose=False)
    epochs = config.epochs or spec.recipe.epochs

    data = ArrayDataModule.from_spec(spec, data_dir=config.data_dir, seed=config.seed,
                                     allow_partial_test=config.allow_partial_test,
                                     steps_per_execution=config.steps_per_execution,
                                     **({"batch_size": config.batch_size} if config.batch_size else {}))
    data.prepare_data()  # resolve (and validate) the data before any process is started
    try:
        run_checks.check_batch_size(config.batch_size, data.train_size())
    except UsageError:
        raise
    except ValueError as error:  # a --train-images larger than the data set
        raise ConfigError(f"--train-images {config.train_images}: {error}") from None
    module = KerasRecipeModule(spec.id, init=config.init, seed=config.seed, compiled=config.compile,
                               steps_per_execution=config.steps_per_execution)
    if spec.layers[0][0] == "vgg16_features":
        weights = find_vgg16_weights(config.weights)  # raises WeightsNotFoundError saying where to put them
        if weights is not None:
            load_vgg16_features(module.model, weights)
        log.info("VGG16 features: %s", f"ImageNet weights from {weights}" if weights
                 else "from scratch (--weights none)")
    has_val = bool(spec.recipe.validation_split or spec.recipe.validation_test_head)
    history = EpochHistory(out, total_epochs=epochs)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_loss" if has_val
                                 else "train_loss", mode="min", save_last=True, enable_version_counter=False)
    callbacks = [history, TerminateOnNaN(), checkpoint]
    if spec.recipe.early_stopping_patience and has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=spec.recipe.early_stopping_patience))
    limits = {key: value for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
              if (value := getattr(config, key)) is not None}
    trainer = make_trainer(accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
                           precision=config.precision, callbacks=callbacks, progress_bar=config.progress_bar,
                           max_epochs=epochs, fast_dev_run=config.fast_dev_run, default_root_dir=out, **limits)
    if trainer.is_global_zero:
        channels, (height, width) = spec.input_shape[2], spec.input_shape[:2]
        log.info("%s", summary(module.model, (channels, height, width)))
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=config.resume)
    except SystemExit:
        if trainer.interrupted:
            raise _interrupted(trainer, out) from None
        raise
    fit_seconds = time.perf_counter() - started
    train_samples = int(trainer.callback_metrics.get("train_samples", torch.tensor(0)).item())  # before test resets
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    return {
        "model": spec.id,
        "framework": "lightning",
        "seed": config.seed,
        "epochs_run": len(history.rows),
        "test_loss": test["test_loss"],
        "test_accuracy": test["test_acc"],
        "test_samples": int(test["test_samples"]),
        "test_is_partial": bool(data.test_is_partial),
        "history": history.history(),
        "seconds_per_epoch": [row["seconds"] for row in history.rows],
        "fit_seconds": round(fit_seconds, 2),
        "train_samples_last_epoch": train_samples,
        "best_checkpoint": str(out / "checkpoints" / "best.ckpt"),
        "config": asdict(config),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, "
                   + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
