#!/usr/bin/env python
"""Stratified k-fold cross-validation of a documented model (document 001's CIFAR-10 exercise), either framework.

    python scripts/crossval.py --model cifar10_cnn --folds 5 --allow-partial-test --train-subset 5000 --epochs 10
    python scripts/crossval.py --model mnist_cnn_small --folds 5 --framework keras --out reports/cv_small_keras

Each fold trains the model with its documented recipe (optimizer, loss, batch size, preprocessing; early stopping
on the fold's validation loss where the recipe has it) on the other folds, validates on its own fold every
epoch, then predicts the test set. Writes into --out: crossval.md, crossval.json, learning_curves_folds.png,
confusion_matrix.png and misclassified.png (out-of-fold analysis), and folds/fold_<i>.{json,npz} as each fold
finishes (--resume reuses them). CIFAR-10 test numbers on the shared data are on its first 1,000 test images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "lightning_cnn").is_dir():  # running from a checkout: use this checkout's packages
    sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="documented model id (SPEC.md), e.g. cifar10_cnn, mnist_cnn_small")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--framework", default="lightning", choices=["lightning", "keras"])
    p.add_argument("--epochs", type=int, help="epochs per fold (default: the recipe's)")
    p.add_argument("--train-subset", type=int, metavar="N",
                   help="cross-validate on the first N training images (default: the whole training set)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment seed; fold i trains with seed + i - 1")
    p.add_argument("--data-dir", help="data folder (else $LIGHTNING_CNN_DATA, caches, download)")
    p.add_argument("--out", help="report folder (default reports/crossval/MODEL_FRAMEWORK)")
    p.add_argument("--allow-partial-test", action="store_true",
                   help="accept a test set shorter than the official one (numbers then say so)")
    p.add_argument("--threads", type=int, help="CPU threads for the framework (default: its own choice)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (lightning framework only)")
    p.add_argument("--resume", action="store_true", help="reuse folds already finished in --out with the same settings")
    p.add_argument("--grid", type=int, default=24, help="misclassified images shown (default 24)")
    return p.parse_args(argv)


def _set_threads(framework: str, threads: int | None) -> None:
    if not threads:
        return
    if framework == "keras":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    else:
        import torch

        torch.set_num_threads(threads)


def train_fold_keras(spec, train, val, test, *, epochs=None, seed=0, verbose=2) -> dict:
    """One fold in Keras: ``keras_ref.build_model`` + the recipe's compile/fit, ``validation_data`` = the fold."""
    import keras
    import numpy as np

    import keras_ref
    from keras_ref import training
    from lightning_cnn import analysis
    from lightning_cnn.data import preprocess

    recipe = dataclasses.replace(spec.recipe, validation_split=0.0, train_subset=None, validation_test_head=None)
    cv_spec = dataclasses.replace(spec, recipe=recipe)

    def images(x):
        return np.asarray(preprocess(x, spec.preprocessing), np.float32).reshape((len(x),) + spec.input_shape)

    def labels(y):
        y = analysis.labels_of(y)
        return keras.utils.to_categorical(y, spec.num_classes) if recipe.loss == "categorical_crossentropy" else y

    arrays = {"x_train": images(train[0]), "y_train": labels(train[1]), "x_val": images(val[0]),
              "y_val": labels(val[1])}
    model = keras_ref.build_model(spec.id, seed=seed)
    training.compile_model(model, cv_spec)
    history = training.fit_recipe(model, cv_spec, arrays, epochs=epochs, seed=seed, verbose=verbose)
    rows = analysis.history_rows(history.history, history.epoch_seconds)
    return {"history_rows": rows, "epoch_seconds": [float(s) for s in history.epoch_seconds],
            "epochs_run": len(rows), "val_probs": model.predict(arrays["x_val"], batch_size=1000, verbose=0),
            "test_probs": model.predict(images(test[0]), batch_size=1000, verbose=0)}


def _fold_files(out: Path, fold: int) -> tuple[Path, Path]:
    return out / "folds" / f"fold_{fold}.json", out / "folds" / f"fold_{fold}.npz"


def _save_fold(out: Path, fold: int, settings: dict, result: dict) -> None:
    import io

    import numpy as np

    from lightning_cnn.atomic import write_bytes, write_text

    meta_path, arrays_path = _fold_files(out, fold)
    buffer = io.BytesIO()
    np.savez(buffer, val_probs=result["val_probs"], test_probs=result["test_probs"])
    write_bytes(arrays_path, buffer.getvalue())
    kept = {k: v for k, v in result.items() if k not in ("val_probs", "test_probs")}
    write_text(meta_path, json.dumps({"settings": settings, **kept}, indent=2) + "\n")


def _load_fold(out: Path, fold: int, settings: dict) -> dict | None:
    import numpy as np

    meta_path, arrays_path = _fold_files(out, fold)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") != settings:
            return None
        with np.load(arrays_path) as arrays:
            return {**{k: v for k, v in meta.items() if k != "settings"},
                    "val_probs": arrays["val_probs"], "test_probs": arrays["test_probs"]}
    except (OSError, ValueError, KeyError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from lightning_cnn.specs import UnknownModelError, get_spec

    try:
        spec = get_spec(args.model)
    except UnknownModelError as e:
        print(f"crossval.py: error: {e}", file=sys.stderr)
        return 2
    if args.framework == "keras":
        import keras_ref

        keras_ref.load_tensorflow()  # the coexistence guard first, then TensorFlow
    import numpy as np

    from lightning_cnn import analysis, crossval
    from lightning_cnn.data import CLASS_NAMES, TEST_SIZE, DataError, load_dataset

    _set_threads(args.framework, args.threads)
    try:
        (x_train, y_train), (x_test, y_test) = load_dataset(spec.dataset, args.data_dir,
                                                            allow_partial_test=args.allow_partial_test)
    except DataError as e:
        print(f"crossval.py: error: {e}", file=sys.stderr)
        return 2
    n_cv = args.train_subset or len(x_train)
    if not 0 < n_cv <= len(x_train):
        print(f"crossval.py: error: --train-subset {n_cv} but there are {len(x_train):,} training images",
              file=sys.stderr)
        return 2
    x_cv, y_cv = x_train[:n_cv], analysis.labels_of(y_train[:n_cv])
    y_test = analysis.labels_of(y_test)
    try:
        folds = crossval.stratified_kfold(y_cv, args.folds, seed=args.seed)
    except ValueError as e:
        print(f"crossval.py: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("reports") / "crossval" / f"{spec.id}_{args.framework}")
    epochs = args.epochs or spec.recipe.epochs
    partial = len(x_test) < TEST_SIZE
    settings = {"model": spec.id, "framework": args.framework, "folds": args.folds, "seed": args.seed,
                "cv_size": n_cv, "epochs": epochs, "n_test": len(x_test)}
    where = f" (first {len(x_test):,} test images)" if partial else ""

    results = []
    for fold, (train_idx, val_idx) in enumerate(folds, start=1):
        result = _load_fold(out, fold, settings) if args.resume else None
        if result is None:
            print(f"--- fold {fold}/{args.folds}: train {len(train_idx):,}, validate {len(val_idx):,} "
                  f"({args.framework})", flush=True)
            train, val = (x_cv[train_idx], y_cv[train_idx]), (x_cv[val_idx], y_cv[val_idx])
            seed = args.seed + fold - 1
            if args.framework == "keras":
                result = train_fold_keras(spec, train, val, (x_test, y_test), epochs=epochs, seed=seed)
            else:
                result = crossval.train_fold_lightning(spec.id, train, val, (x_test, y_test), epochs=epochs,
                                                       seed=seed, accelerator=args.accelerator)
            _save_fold(out, fold, settings, result)
        else:
            print(f"--- fold {fold}/{args.folds}: reusing {_fold_files(out, fold)[0]}", flush=True)
        val_m = crossval.fold_metrics(result["val_probs"], y_cv[val_idx])
        test_m = crossval.fold_metrics(result["test_probs"], y_test)
        print(f"fold {fold}: val acc {100 * val_m['accuracy']:.2f}% loss {val_m['loss']:.4f}; test acc{where} "
              f"{100 * test_m['accuracy']:.2f}%", flush=True)
        results.append(result)

    versions = {}
    if args.framework == "keras":
        import keras
        import tensorflow as tf

        versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    else:
        import lightning
        import torch

        versions = {"torch": torch.__version__, "lightning": lightning.__version__}
    recipe = spec.recipe
    meta = {
        **settings, "dataset": spec.dataset, "train_size_available": len(x_train), "test_is_partial": partial,
        "recipe": f"{recipe.optimizer} {recipe.optimizer_args or '(Keras defaults)'}, {recipe.loss}, "
                  f"batch {recipe.batch_size}",
        "early_stopping": bool(recipe.early_stopping_patience),
        "command": shlex.join(["python", "scripts/crossval.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": analysis.machine_description(threads=args.threads) + ", "
                   + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "versions": versions, "finished": crossval.now(), "wall_seconds": time.perf_counter() - started,
    }
    data = crossval.write_report(out, meta=meta, folds=folds, fold_results=results, x_cv=x_cv, y_cv=y_cv,
                                 y_test=y_test, class_names=CLASS_NAMES[spec.dataset], grid_size=args.grid)
    va, ta = data["val_accuracy"], data["test_accuracy"]
    std = (lambda s: "" if s["std"] is None else f" ± {100 * s['std']:.2f}")
    print(f"{args.folds}-fold CV of {spec.id} ({args.framework}): val acc {100 * va['mean']:.2f}{std(va)}%, "
          f"test acc{where} {100 * ta['mean']:.2f}{std(ta)}%; report: {out / 'crossval.md'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
