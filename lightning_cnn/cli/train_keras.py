"""Train a documented model in Keras, the way its document did: build, summary, fit (per-epoch log), evaluate.

    keras-cnn-train --model mnist_cnn_small --seed 0
    keras-cnn-train --model cifar10_cnn --allow-partial-test --metrics-json runs/cifar10_cnn.json

(``python scripts/train_keras.py ...`` is the same command.) The Keras reference side of the project
(``keras_ref``, which needs the ``[keras]`` extra); the recipe of each id is in ``lightning_cnn/specs.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys

from ..errors import exit_on_user_error


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="keras-cnn-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="documented model id (lightning-cnn-train --help lists them)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--seed", type=int, default=0, help="keras.utils.set_random_seed before building and fitting")
    p.add_argument("--data-dir", help="data directory (default: the data layer's; LIGHTNING_CNN_DATA)")
    p.add_argument("--metrics-json", help="write results and per-epoch history to this JSON file")
    p.add_argument("--weights", help="VGG16 no-top ImageNet weights .h5 (cifar10_vgg16_transfer only)")
    p.add_argument("--train-images", metavar="N|all", help="train on the first N training images, or 'all' "
                   "(default: the recipe's; cifar10_cnn's is 300, as in document 003)")
    p.add_argument("--allow-partial-test", action="store_true",
                   help="accept a test set shorter than the official one (e.g. CIFAR-10's first 1,000 images)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2),
                   help="Keras fit verbosity (default: 1 on a terminal, else 2 = one line per epoch)")
    return p.parse_args(argv)


def _main(argv) -> int:
    args = parse_args(argv)
    from lightning_cnn.errors import UsageError
    from lightning_cnn.specs import get_spec, with_train_images

    try:
        spec = with_train_images(get_spec(args.model), args.train_images)  # before TensorFlow loads: one line
    except ValueError as e:
        raise UsageError(str(e)) from None

    import keras_ref  # imports lightning_cnn (and torch) before TensorFlow: the order the two need
    from keras_ref import training

    arrays = training.prepare_arrays(spec, args.data_dir, True if args.allow_partial_test else False)
    model = keras_ref.build_model(spec.id, seed=args.seed, weights=args.weights)  # WeightsNotFoundError: a UserError

    model.summary()
    training.compile_model(model, spec)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    history = training.fit_recipe(model, spec, arrays, epochs=args.epochs, batch_size=args.batch_size,
                                  seed=args.seed, verbose=verbose)
    result = training.evaluate(model, arrays)

    where = f" (first {result['n_test']:,} test images)" if result["test_is_partial"] else ""
    print(f"Test loss{where}: {result['test_loss']:.4f}")
    print(f"Test accuracy{where}: {result['test_accuracy']:.4f}")

    if args.metrics_json:
        import keras
        import tensorflow as tf

        from lightning_cnn.atomic import write_text

        metrics = {
            "model": spec.id, "framework": "keras", "seed": args.seed, "train_images": len(arrays["x_train"]),
            "epochs_run": len(history.epoch),
            "test_loss": result["test_loss"], "test_accuracy": result["test_accuracy"],
            "test_is_partial": result["test_is_partial"], "test_images": result["n_test"],
            "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "seconds_per_epoch": statistics.fmean(history.epoch_seconds),
            "epoch_seconds": history.epoch_seconds,
            "command": shlex.join(["python", *sys.argv]),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        write_text(args.metrics_json, json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.metrics_json}")
    return 0


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
