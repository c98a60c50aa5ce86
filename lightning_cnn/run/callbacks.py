"""Keras-style epoch log and per-epoch history (CSV + learning-curve PNG), written atomically after every epoch."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import lightning as L

from ..atomic import atomic_path, write_text
from ..errors import DivergedError
from ..trained import DATA_RECORD_KEY

# Our metric names -> the names Keras prints in its fit() log and History.
KERAS_NAMES = {"train_loss": "loss", "train_acc": "accuracy", "val_loss": "val_loss", "val_acc": "val_accuracy"}


class EpochHistory(L.Callback):
    """Prints one Keras-style line per epoch and keeps the history that ``model.fit`` would return.

    Its state travels in checkpoints, so a resumed run's CSV and curves cover the whole run.
    """

    def __init__(self, out_dir: str | Path | None = None, total_epochs: int | None = None):
        self.out_dir = Path(out_dir) if out_dir else None
        self.total_epochs = total_epochs
        self.rows: list[dict] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        row.update({name: float(metrics[name]) for name in KERAS_NAMES if name in metrics})
        self.rows.append(row)
        if not trainer.is_global_zero:
            return
        shown = " - ".join(f"{KERAS_NAMES[k]}: {row[k]:.4f}" for k in KERAS_NAMES if k in row)
        print(f"Epoch {row['epoch']}/{self.total_epochs or trainer.max_epochs} - {row['seconds']:.1f}s - {shown}",
              flush=True)
        if self.out_dir is not None:
            write_history_csv(self.out_dir / "metrics.csv", self.rows)
            plot_learning_curves({"lightning": self.rows}, self.out_dir / "learning_curves.png")

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state_dict):
        self.rows = list(state_dict.get("rows", []))

    def history(self) -> dict:
        """The Keras ``History.history`` layout: metric name -> per-epoch list."""
        keys = [k for k in KERAS_NAMES if any(k in row for row in self.rows)]
        return {KERAS_NAMES[k]: [row.get(k) for row in self.rows] for k in keys}


def write_history_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def plot_learning_curves(runs: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs validation, one line style per framework/run."""
    from matplotlib.figure import Figure  # not pyplot: no backend to choose, no global state

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for run_name, rows in runs.items():
        epochs = [row["epoch"] for row in rows]
        for ax, metric in zip(axes, ("loss", "acc")):
            for stage, style in (("train", "-o"), ("val", "--s")):
                values = [row.get(f"{stage}_{metric}") for row in rows]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, style, label=f"{run_name} {stage}", markersize=4)
    for ax, label in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    # Fixed margins rather than tight_layout, which draws the whole figure once more to measure it: this is
    # written after every epoch, and tight_layout was three quarters of the ~1 s each write took.
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.88 if title else 0.95, wspace=0.2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


class DataRecord(L.Callback):
    """Writes what the run's data was (``data.trained_on()``: class names, image shape, pixel preprocessing, data
    set) into every checkpoint, so that prediction prepares images as training did and names the classes."""

    def __init__(self, data):
        self.data = data

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[DATA_RECORD_KEY] = self.data.trained_on()


class TerminateOnNaN(L.Callback):
    """Stops training when the loss becomes NaN or infinite, naming the epoch and step, as Keras's callback does.

    Keras checks ``logs["loss"]``, the running mean of the epoch's training loss; this checks the same running sum
    (``pl_module.train_metrics.loss``, which every training batch updates, with k batches a step too) once per
    Lightning step. It raises ``DivergedError`` before the epoch ends, so no checkpoint of the diverged weights is
    written: ``last.ckpt`` keeps the last epoch that finished.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        running = pl_module.train_metrics.loss.numerator.item()  # one read; no tensor op per step
        if not math.isfinite(running):
            kind = "NaN" if math.isnan(running) else "infinite"
            raise DivergedError(
                f"the training loss became {kind} in epoch {trainer.current_epoch + 1}, step {batch_idx + 1} "
                f"(optimizer step {trainer.global_step}): training stopped and no checkpoint of the diverged "
                "weights was written. Lower the learning rate, check the input data, or train in 32-true precision"
            )
