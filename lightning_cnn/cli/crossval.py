"""Stratified k-fold cross-validation of a documented model (document 001's CIFAR-10 exercise), either framework.

    lightning-cnn-crossval --model cifar10_cnn --folds 5 --allow-partial-test --train-subset 5000 --epochs 10
    lightning-cnn-crossval --model mnist_cnn_small --folds 5 --framework keras --out reports/cv_small_keras

(``python scripts/crossval.py ...`` is the same command.)
Each fold trains the model with its documented recipe (optimizer, loss, batch size, preprocessing; early stopping
on the fold's validation loss where the recipe has it) on the other folds, validates on its own fold every
epoch, then predicts the test set. Writes into --out: crossval.md, crossval.json, learning_curves_folds.png,
confusion_matrix.png and misclassified.png (out-of-fold analysis), and folds/fold_<i>.{json,npz} as each fold
finishes (--resume reuses them). CIFAR-10 test numbers on the shared data are on its first 1,000 test images.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ..errors import exit_on_user_error


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="lightning-cnn-crossval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="documented model id, e.g. cifar10_cnn, mnist_cnn_small")
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


def _main(argv) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from ..specs import get_spec

    spec = get_spec(args.model)  # an unknown id fails here, before TensorFlow loads
    if args.framework == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from keras_ref.crossval import train_fold_keras
    from .. import analysis, crossval
    from ..data import CLASS_NAMES, TEST_SIZE, load_dataset

    _set_threads(args.framework, args.threads)
    (x_train, y_train), (x_test, y_test) = load_dataset(spec.dataset, args.data_dir,
                                                        allow_partial_test=args.allow_partial_test)
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
        result = crossval.load_fold(out, fold, settings) if args.resume else None
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
            crossval.save_fold(out, fold, settings, result)
        else:
            print(f"--- fold {fold}/{args.folds}: reusing the saved fold in {out / 'folds'}", flush=True)
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


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
