"""k-fold cross-validation (document 001's CIFAR-10 exercise), for any documented model and either framework.

Framework-neutral parts (numpy only): ``stratified_kfold`` (the folds), ``cross_entropy`` / ``fold_metrics`` (loss
and accuracy from predicted probabilities, computed the same way for both frameworks) and ``write_report`` (the
markdown + JSON + PNG report). ``train_fold_lightning`` trains one fold with Lightning; the Keras counterpart is
``keras_ref.crossval.train_fold_keras`` because this package never imports TensorFlow.

The recipe of a fold is the document's model, optimizer, loss, batch size and preprocessing. What the fold
replaces: the recipe's own validation (``validation_split`` / ``validation_test_head``) becomes the held-out fold,
and its ``train_subset`` becomes the cross-validation subset (``--train-subset``). Early stopping, where the recipe
has it, watches the fold's validation loss.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from . import analysis
from .atomic import write_text

# --- folds ----------------------------------------------------------------------------------------------------


def stratified_kfold(y, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` pairs ``(train_indices, validation_indices)`` over ``range(len(y))``, stratified by class.

    Each class's indices are shuffled (``np.random.default_rng(seed)``), the classes are laid end to end, and the
    resulting sequence is dealt round-robin to the folds. So every class is split as evenly as possible (per-class
    counts of two folds differ by at most one), fold sizes differ by at most one, the validation folds are disjoint
    and together cover every index exactly once, and the same ``(y, folds, seed)`` always gives the same folds.
    Indices are returned sorted.
    """
    y = analysis.labels_of(y)
    n = len(y)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if folds > n:
        raise ValueError(f"{folds} folds but only {n} samples")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < folds:
        warnings.warn(f"class {classes[counts.argmin()]} has only {counts.min()} samples, fewer than {folds} folds: "
                      "some validation folds will not contain it", stacklevel=2)
    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in classes])
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[dealt] = np.arange(n) % folds
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(folds)]


# --- metrics from probabilities -------------------------------------------------------------------------------

_EPS = 1e-7  # Keras's clip of probabilities in categorical cross-entropy


def cross_entropy(probs, y) -> float:
    """Mean categorical cross-entropy of predicted probabilities (probabilities clipped to [1e-7, 1 - 1e-7] as
    Keras does), so both frameworks' losses are computed by one formula."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = analysis.labels_of(y)
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def fold_metrics(probs, y) -> dict:
    y = analysis.labels_of(y)
    return {"loss": cross_entropy(probs, y), "accuracy": float(np.mean(np.asarray(probs).argmax(axis=1) == y))}


# --- Lightning training of one fold ---------------------------------------------------------------------------


def train_fold_lightning(model_id: str, train, val, test, *, epochs: int | None = None, seed: int = 0,
                         accelerator: str = "auto", devices="auto", verbose: bool = False) -> dict:
    """Train ``model_id`` with its recipe on ``train`` = (uint8 images, int labels), validating on ``val`` every
    epoch; returns ``history_rows``, ``epoch_seconds``, ``val_probs``, ``test_probs`` and ``epochs_run``."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from .run.callbacks import EpochHistory
    from .datamodule import ArrayDataModule
    from .recipes.module import KerasRecipeModule
    from .predict import predict_proba
    from .specs import get_spec
    from .run.training import make_trainer

    spec = get_spec(model_id)
    L.seed_everything(seed, workers=True, verbose=False)
    data = ArrayDataModule(spec.dataset, preprocessing=spec.preprocessing, batch_size=spec.recipe.batch_size,
                           seed=seed, splits={"train": train, "val": val, "test": test})
    module = KerasRecipeModule(spec.id, seed=seed)
    epochs = epochs or spec.recipe.epochs
    history = EpochHistory(None, total_epochs=epochs)
    callbacks = [history]
    if spec.recipe.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=spec.recipe.early_stopping_patience))
    trainer = make_trainer(accelerator=accelerator, devices=devices, max_epochs=epochs, callbacks=callbacks,
                           progress_bar=verbose)
    trainer.fit(module, datamodule=data)
    return {
        "history_rows": [dict(row) for row in history.rows],
        "epoch_seconds": [row["seconds"] for row in history.rows],
        "epochs_run": len(history.rows),
        "val_probs": predict_proba(module.model, spec.preprocessing, val[0]),
        "test_probs": predict_proba(module.model, spec.preprocessing, test[0]),
    }


# --- finished folds on disk (--resume) ------------------------------------------------------------------------


def _fold_files(out: Path, fold: int) -> tuple[Path, Path]:
    return out / "folds" / f"fold_{fold}.json", out / "folds" / f"fold_{fold}.npz"


def save_fold(out, fold: int, settings: dict, result: dict) -> Path:
    """Write fold ``fold``'s result (probabilities as .npz, the rest as JSON with ``settings``); returns the JSON
    path."""
    import io

    from .atomic import write_bytes

    meta_path, arrays_path = _fold_files(Path(out), fold)
    buffer = io.BytesIO()
    np.savez(buffer, val_probs=result["val_probs"], test_probs=result["test_probs"])
    write_bytes(arrays_path, buffer.getvalue())
    kept = {k: v for k, v in result.items() if k not in ("val_probs", "test_probs")}
    write_text(meta_path, json.dumps({"settings": settings, **kept}, indent=2) + "\n")
    return meta_path


def load_fold(out, fold: int, settings: dict) -> dict | None:
    """Fold ``fold``'s saved result if it was run with the same ``settings``, else None."""
    meta_path, arrays_path = _fold_files(Path(out), fold)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") != settings:
            return None
        with np.load(arrays_path) as arrays:
            return {**{k: v for k, v in meta.items() if k != "settings"},
                    "val_probs": arrays["val_probs"], "test_probs": arrays["test_probs"]}
    except (OSError, ValueError, KeyError):
        return None


# --- report ---------------------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def write_report(out, *, meta: dict, folds: Sequence[tuple[np.ndarray, np.ndarray]], fold_results: list[dict],
                 x_cv: np.ndarray, y_cv: np.ndarray, y_test: np.ndarray, class_names: Sequence[str],
                 grid_size: int = 24) -> dict:
    """Aggregate the folds and write ``crossval.md``, ``crossval.json``, ``learning_curves_folds.png``,
    ``confusion_matrix.png`` and ``misclassified.png`` into ``out`` (atomically). Returns the JSON data.

    ``fold_results[i]`` holds ``history_rows``, ``epoch_seconds``, ``epochs_run``, ``val_probs`` (probabilities
    of fold i's held-out images, in ``folds[i][1]`` order) and ``test_probs``. The misclassification analysis is
    out-of-fold: every cross-validation image is predicted by the model that did not train on it.
    """
    out = Path(out)
    y_cv = analysis.labels_of(y_cv)
    y_test = analysis.labels_of(y_test)
    n_classes = len(class_names)
    oof = np.zeros((len(y_cv), n_classes), dtype=np.float32)
    per_fold = []
    for i, ((_, val_idx), result) in enumerate(zip(folds, fold_results), start=1):
        oof[val_idx] = result["val_probs"]
        val = fold_metrics(result["val_probs"], y_cv[val_idx])
        test = fold_metrics(result["test_probs"], y_test)
        per_fold.append({
            "fold": i, "train_size": int(len(y_cv) - len(val_idx)), "val_size": int(len(val_idx)),
            "val_accuracy": val["accuracy"], "val_loss": val["loss"],
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "epochs_run": result["epochs_run"],
            "seconds_per_epoch": float(np.median(result["epoch_seconds"])) if result["epoch_seconds"] else None,
            "history_rows": result["history_rows"],
        })
    ensemble = fold_metrics(np.mean([r["test_probs"] for r in fold_results], axis=0), y_test)

    def stats(key):
        mean, std = analysis.mean_std([f[key] for f in per_fold])
        return {"mean": mean, "std": std}

    oof_summary = analysis.classification_summary(oof, y_cv, class_names)
    partial = meta.get("test_is_partial", False)
    test_where = f"first {len(y_test):,} test images" if partial else f"{len(y_test):,} test images"
    data = {**meta, "test_set": test_where, "folds": per_fold,
            "val_accuracy": stats("val_accuracy"), "val_loss": stats("val_loss"),
            "test_accuracy": stats("test_accuracy"), "test_loss": stats("test_loss"),
            "ensemble_test_accuracy": ensemble["accuracy"], "ensemble_test_loss": ensemble["loss"],
            "out_of_fold": oof_summary,
            "figures": {"learning_curves": "learning_curves_folds.png", "confusion_matrix": "confusion_matrix.png",
                        "misclassified": "misclassified.png"}}

    title = f"{meta['model']} ({meta['framework']}), {len(folds)}-fold CV on {len(y_cv):,} training images"
    analysis.plot_learning_curves_both({f"fold {f['fold']}": f["history_rows"] for f in per_fold},
                                       out / "learning_curves_folds.png", title=title)
    analysis.plot_confusion_matrices({"out-of-fold": np.array(oof_summary["confusion_matrix"])}, class_names,
                                     out / "confusion_matrix.png", title=title)
    wrong = analysis.misclassified_indices(oof, y_cv, limit=grid_size)
    analysis.plot_misclassified_grid(x_cv, y_cv, oof, wrong, class_names, out / "misclassified.png",
                                     title=f"{title}: most confident out-of-fold mistakes")
    write_text(out / "crossval.json", json.dumps(data, indent=2) + "\n")
    write_text(out / "crossval.md", _markdown(data, class_names, test_where))
    return data


def _markdown(data: dict, class_names, test_where: str) -> str:
    def ms(stat, scale=100.0, digits=2):
        mean, std = stat["mean"], stat["std"]
        text = f"{scale * mean:.{digits}f}"
        return text if std is None else f"{text} ± {scale * std:.{digits}f}"

    lines = [
        f"# {len(data['folds'])}-fold cross-validation: `{data['model']}` ({data['framework']})", "",
        f"- Command: `{data['command']}`",
        f"- Data: {data['dataset']}, the first {data['cv_size']:,} training images"
        f"{' (the whole training set)' if data['cv_size'] == data['train_size_available'] else ''}; "
        f"stratified folds (seed {data['seed']}); test set: {test_where}.",
        f"- Recipe: {data['recipe']}; {data['epochs']} epoch(s) per fold"
        f"{' (early stopping on the fold validation loss)' if data.get('early_stopping') else ''}.",
        f"- Machine: {data['machine']}. Finished {data['finished']}, {data['wall_seconds']:.0f} s in all.",
        "",
        "## Per fold", "",
        f"| fold | train | val | epochs | val acc % | val loss | test acc % ({test_where}) | test loss | s/epoch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in data["folds"]:
        sec = "–" if f["seconds_per_epoch"] is None else f"{f['seconds_per_epoch']:.1f}"
        lines.append(f"| {f['fold']} | {f['train_size']:,} | {f['val_size']:,} | {f['epochs_run']} | "
                     f"{_pct(f['val_accuracy'])} | {f['val_loss']:.4f} | {_pct(f['test_accuracy'])} | "
                     f"{f['test_loss']:.4f} | {sec} |")
    lines += [
        f"| **mean ± std** | | | | **{ms(data['val_accuracy'])}** | {ms(data['val_loss'], 1, 4)} | "
        f"**{ms(data['test_accuracy'])}** | {ms(data['test_loss'], 1, 4)} | |",
        "",
        f"Ensemble of the {len(data['folds'])} fold models (mean probabilities) on the {test_where}: "
        f"accuracy {_pct(data['ensemble_test_accuracy'])}%, loss {data['ensemble_test_loss']:.4f}.",
        "Losses and accuracies are computed from the predicted probabilities with one formula for both frameworks "
        "(categorical cross-entropy, probabilities clipped to [1e-7, 1 − 1e-7] as Keras does); std is the sample "
        "standard deviation over folds.",
        "",
        "![learning curves of every fold](learning_curves_folds.png)", "",
        "## Misclassification analysis (out-of-fold predictions)", "",
        f"Every one of the {data['out_of_fold']['n']:,} cross-validation images predicted by the fold model that "
        f"did not train on it: {data['out_of_fold']['errors']:,} mistakes, accuracy "
        f"{_pct(data['out_of_fold']['accuracy'])}%.", "",
        "| class | accuracy % |", "|---|---:|",
    ]
    for name, acc in data["out_of_fold"]["per_class_accuracy"].items():
        lines.append(f"| {name} | {_pct(acc)} |")
    lines += ["", "Most confused pairs (true → predicted: count):", ""]
    lines += [f"- {p['true']} → {p['predicted']}: {p['count']}" for p in data["out_of_fold"]["most_confused"]]
    if not data["out_of_fold"]["most_confused"]:
        lines.append("- none")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "",
              "Most confident mistakes (true label, predicted label and its probability):", "",
              "![misclassified images](misclassified.png)", ""]
    return "\n".join(lines)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")
