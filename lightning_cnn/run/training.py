"""The library API under every command: one Trainer builder and one run core for every model.

``make_trainer`` is the only place a ``lightning.Trainer`` is configured (training, cross-validation, the
benchmark and the tests all use it), so the run settings and the CPU settings cannot drift apart.
``fit_and_test(RunConfig(...))`` is the run core: it trains a documented model with its recipe, or the PyTorch
twin of the user's Keras model (``keras_model``) with that model's compile config, on the data that
``run_plan.data_module_for`` chooses, tests the final model and returns the metrics as a dict. Both go through
the same flag checks, run lock, process-state restore, NaN stop, Ctrl-C and SIGTERM handling, resume and atomic
files. It prints nothing and writes only the run folder (checkpoints, metrics.csv, learning curves, the optional
CSV/TensorBoard logs). Printing, JSON files and exit codes belong to ``lightning_cnn.cli``. Messages go to the
``lightning_cnn`` logger, which a command line shows and a library user may leave silent.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from . import checks as run_checks
from .callbacks import DataRecord, EpochHistory, TerminateOnNaN
from .checkpoint_io import AtomicCheckpointIO
from ..errors import Interrupted, Terminated, UsageError
from ..nets.pretrained import find_vgg16_weights, load_vgg16_features
from .process_state import preserved_process_state
from .lock import run_lock
from .plan import RunModel, check_data_fits, check_resume_checkpoint, data_module_for, documented_spec, run_model
from ..speed import Speed
from ..specs import DEFAULT_MODEL
from ..nets.summary import summary

log = logging.getLogger("lightning_cnn")

# A bar redrawn every step costs more than a small model's step on CPU: redraw every 25 steps.
PROGRESS_REFRESH_STEPS = 25
LOGGERS = ("csv", "tensorboard")  # --logger: Lightning's CSVLogger / TensorBoardLogger, in OUT/logs/


class ConfigError(UsageError):
    """A run setting that cannot work here (no GPU for accelerator="gpu", a missing checkpoint, ...)."""


@dataclass
class RunConfig:
    """One training run; the defaults are the recipe's (a documented model) or Keras's (a ``keras_model``'s twin:
    1 epoch, batch 32). Field names match train.py's flags."""

    model: str = DEFAULT_MODEL
    keras_model: str | None = None  # a converted folder or a .keras file: train its twin instead of ``model``
    dataset: str | None = None  # mnist, fashion_mnist or cifar10; None: the documented model's own
    data: str | None = None  # the user's own data: a folder of class subfolders of images, or an .npz (user_data)
    validation_split: float = 0.0  # --data: Keras's (a folder: image_dataset_from_directory's; an .npz: fit()'s)
    image_size: tuple | None = None  # --data folder: (H, W) for a model that takes any size
    rescale: str = "auto"  # --data: "auto", "1/255" or "none" (user_data.model_inputs.ModelInputs.preprocessing)
    workers: int | None = None  # --data folder: DataLoader worker processes decoding images; None: cores - 1
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1  # machines of one run (torchrun / SLURM start the processes on each; docs/usage.md)
    strategy: str = "auto"
    precision: str = "32-true"
    epochs: int | None = None  # None: the recipe's
    batch_size: int | None = None  # None: the recipe's
    seed: int = 0
    data_dir: str | None = None  # None: the data layer's lookup ($LIGHTNING_CNN_DATA, Keras cache, download)
    out: str | None = None  # None: runs/<model>
    fast_dev_run: bool = False
    resume: str | None = None
    init: str | None = None  # documented models: "keras" (default) or "torch" initialisers
    compile: bool = False  # torch.compile the network
    steps_per_execution: int = 1  # optimizer steps per Lightning step (Keras's compile argument of that name)
    train_images: str | None = None  # None: the recipe's training subset; "all" or a number overrides it
    weights: str = "auto"  # VGG16 transfer model: ImageNet weights file, "auto" (search caches) or "none"
    allow_partial_test: bool = False
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    limit_test_batches: float | None = None
    progress_bar: bool = True
    logger: str | None = None  # "csv" or "tensorboard" (OUT/logs/), beside metrics.csv and the learning curves


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
                 logger=False, **settings) -> L.Trainer:
    """A Trainer for this project's modules and loaders: no logger unless given, no sanity validation, no model
    summary; the loaders shard themselves across ranks (``InMemoryLoader``), so no distributed sampler; checkpoints
    only when a checkpoint callback is given; the process settings and loop tricks of ``speed`` (default ``Speed()``:
    CPU tuning on a CPU run, ``Speed.prepare_trainer``); checkpoints written atomically (``AtomicCheckpointIO``).
    ``settings`` are any other ``lightning.Trainer`` arguments (``max_epochs``, ``max_steps``, ``num_nodes``, ...)."""
    callbacks = list(callbacks)
    speed = speed or Speed()
    if progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS))
    return speed.prepare_trainer(L.Trainer(
        accelerator=accelerator, devices=_devices(devices), strategy=strategy, precision=precision,
        callbacks=[*callbacks, *speed.trainer_callbacks(accelerator)], logger=logger,
        num_sanity_val_steps=0, use_distributed_sampler=False, enable_model_summary=False,
        enable_progress_bar=progress_bar, plugins=[AtomicCheckpointIO()],
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks), **settings))


def _check_flags(config: RunConfig) -> None:
    """Every flag either works on this run's path or is refused here, before anything is loaded or written."""
    check_accelerator(config.accelerator)
    run_checks.check_epochs(config.epochs)
    run_checks.check_steps_per_execution(config.steps_per_execution)
    run_checks.check_precision(config.precision, config.accelerator)
    run_checks.check_devices(config.devices, config.accelerator)
    run_checks.check_num_nodes(config.num_nodes)
    if config.logger is not None:
        if config.logger not in LOGGERS:
            raise UsageError(f"--logger {config.logger}: use one of {', '.join(LOGGERS)}")
        if config.logger == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--logger tensorboard needs the tensorboard package: pip install "
                             "'lightning-cnn[tensorboard]' (or use --logger csv)")
    if config.keras_model:
        for flag, value, neutral, why in (
                ("--init", config.init, None, "a --keras-model twin starts from the converted Keras weights"),
                ("--weights", config.weights, "auto", "it is the ImageNet weights of cifar10_vgg16_transfer")):
            if value != neutral:
                raise UsageError(f"{flag} {value}: not for --keras-model ({why}); leave it out")
    else:
        spec = documented_spec(config)  # an unknown model id or a bad --train-images is refused here
        if config.weights != "auto" and spec.layers[0][0] != "vgg16_features":
            raise UsageError(f"--weights {config.weights}: only cifar10_vgg16_transfer takes ImageNet weights; "
                             f"{spec.id} trains from scratch (leave --weights out)")


def _is_launched_worker() -> bool:
    """A process that a launcher (Lightning's DDP, torchrun, srun) started beside the run's first one: the first
    process of the first node holds the lock and writes the files; the others only train."""
    return any(os.environ.get(key, "0") != "0" for key in ("LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK",
                                                            "SLURM_PROCID"))


def fit_and_test(config: RunConfig) -> dict:
    """Fit, test the final model, write checkpoints, metrics.csv and learning curves into the run folder; returns
    the final metrics, the per-epoch history and what the run was (config, machine, versions).

    The run holds the folder's lock (``run_lock``: a second run with the same ``out`` is refused) and leaves the
    process as it found it (``preserved_process_state``); Ctrl-C raises ``Interrupted`` and SIGTERM ``Terminated``
    (a ``SystemExit`` with status 143), each saying what was kept and how to resume.
    """
    _check_flags(config)
    model = run_model(config)
    data = data_module_for(config, model)
    check_data_fits(model, data, f"--keras-model {config.keras_model}" if config.keras_model
                    else f"--model {model.name}")
    data.prepare_data()  # resolve (and validate) the data before any process is started
    try:
        run_checks.check_batch_size(config.batch_size, data.train_size())
    except UsageError:
        raise
    except ValueError as error:  # a --train-images larger than the data set
        raise ConfigError(f"--train-images {config.train_images}: {error}") from None
    if config.limit_val_batches is not None and not data.has_validation:
        raise UsageError(f"--limit-val-batches {config.limit_val_batches}: this run has no validation data "
                         "(leave it out)")
    if config.resume:
        check_resume_checkpoint(config.resume, model, data)
    out = Path(config.out or Path("runs") / model.name)
    with preserved_process_state():
        if _is_launched_worker():
            return _fit_and_test(config, model, data, out)
        with run_lock(out):
            return _fit_and_test(config, model, data, out)


def _stopped(trainer: L.Trainer, out: Path, error_class, stage):
    """What Ctrl-C or SIGTERM left: say what was kept and how to go on."""
    last = out / "checkpoints" / "last.ckpt"
    where = (f"during epoch {trainer.current_epoch + 1} (optimizer step {trainer.global_step})"
             if stage == trainer.fit else "while testing the trained model")
    if not last.is_file():
        return error_class(f"training stopped {where}, before the first checkpoint; nothing to resume from")
    epoch = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1
    return error_class(f"training stopped {where}; {last} holds the run as it was after epoch {epoch}: "
                       f"continue with --resume {last}")


def _run_stage(trainer: L.Trainer, out: Path, stage, *args, **kwargs):
    """``trainer.fit`` or ``trainer.test``; Lightning turns Ctrl-C into ``sys.exit(1)`` after a graceful shutdown
    and SIGTERM into its ``SIGTERMException``: both become one line naming the checkpoint to resume from."""
    try:
        return stage(*args, **kwargs)
    except SIGTERMException:
        raise _stopped(trainer, out, Terminated, stage) from None
    except SystemExit:
        if trainer.interrupted:
            raise _stopped(trainer, out, Interrupted, stage) from None
        raise


def _make_logger(kind: str | None, out: Path):
    """Lightning's logger for ``--logger``, writing under OUT/logs/<kind>/version_N/.

    TensorBoard's writer imports TensorFlow when it is installed (``tensorboard.compat.tf``), which this package
    never does (see ``coexist``); TensorBoard's own switch for its TF-free stub is an importable
    ``tensorboard.compat.notf``, so an empty one is registered first, unless TensorFlow is already loaded.
    """
    if kind is None:
        return False
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if kind == "tensorboard" and "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    return (CSVLogger if kind == "csv" else TensorBoardLogger)(out / "logs", name=kind)


def _fit_and_test(config: RunConfig, model: RunModel, data, out: Path) -> dict:
    L.seed_everything(config.seed, workers=True, verbose=False)
    epochs = config.epochs or model.epochs
    spec = model.spec
    if spec is not None and spec.layers[0][0] == "vgg16_features":
        weights = find_vgg16_weights(config.weights)  # raises WeightsNotFoundError saying where to put them
        if weights is not None:
            load_vgg16_features(model.module.model, weights)
        log.info("VGG16 features: %s", f"ImageNet weights from {weights}" if weights
                 else "from scratch (--weights none)")
    history = EpochHistory(out, total_epochs=epochs)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_loss" if
                                 data.has_validation else "train_loss", mode="min", save_last=True,
                                 enable_version_counter=False)
    callbacks = [history, TerminateOnNaN(), checkpoint, DataRecord(data)]
    if spec is not None and spec.recipe.early_stopping_patience and data.has_validation:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=spec.recipe.early_stopping_patience))
    limits = {key: value for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
              if (value := getattr(config, key)) is not None}
    trainer = make_trainer(accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
                           precision=config.precision, callbacks=callbacks, progress_bar=config.progress_bar,
                           logger=_make_logger(config.logger, out), num_nodes=config.num_nodes,
                           max_epochs=epochs, fast_dev_run=config.fast_dev_run, default_root_dir=out, **limits)
    if trainer.is_global_zero and spec is not None:
        channels, (height, width) = spec.input_shape[2], spec.input_shape[:2]
        log.info("%s", summary(model.module.model, (channels, height, width)))
    started = time.perf_counter()
    _run_stage(trainer, out, trainer.fit, model.module, datamodule=data, ckpt_path=config.resume)
    fit_seconds = time.perf_counter() - started
    train_samples = int(trainer.callback_metrics.get("train_samples", torch.tensor(0)).item())  # before test resets
    test = {"test_loss": None, "test_acc": None, "test_samples": 0}  # --data without held-out data
    if data.test_split is not None:
        test = _run_stage(trainer, out, trainer.test, model.module, datamodule=data, verbose=False)[0]
    return {
        **model.report,
        "framework": "lightning",
        "seed": config.seed,
        "epochs_run": len(history.rows),
        "test_loss": test["test_loss"],
        "test_accuracy": test["test_acc"],
        "test_samples": int(test["test_samples"]),
        "test_is_partial": bool(data.test_is_partial),
        "test_split": data.test_split,  # "test"; "val" for --data with validation but no test data; None: neither
        "history": history.history(),
        "seconds_per_epoch": [row["seconds"] for row in history.rows],
        "fit_seconds": round(fit_seconds, 2),
        "train_samples_last_epoch": train_samples,
        "best_checkpoint": str(out / "checkpoints" / "best.ckpt"),
        "last_checkpoint": str(out / "checkpoints" / "last.ckpt"),
        "config": asdict(config),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, "
                   + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
    }
