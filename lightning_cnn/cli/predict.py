"""Print class probabilities for your own images, or for test-set images, from a train.py checkpoint.

    lightning-cnn-predict --checkpoint runs/mnist_cnn_small/checkpoints/best.ckpt my_digit.png other.jpg
    lightning-cnn-predict --checkpoint runs/mnist_cnn_small/checkpoints/best.ckpt --test-indices 0 1 2
    lightning-cnn-predict --checkpoint runs/my_model/checkpoints/best.ckpt photo.jpg   # a --keras-model twin's run

(``python scripts/predict.py ...`` is the same command.) Like tutorial 004, each image gets its top class and the
probabilities of every class, named as the run's data named them (a --data folder's class folders). Images are
resized, converted and scaled as the run's data was. A --keras-model twin is rebuilt from the Keras model its run
trained (the path in its checkpoint, or --keras-model PATH if it moved). An unreadable image (damaged, not an
image, or a decompression bomb declaring more pixels than PIL's limit) is one ``error:`` line naming it, and the
other images still get their answer; the exit status is then 1 (some answers missing), not 2 (nothing done).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import write_text
from ..data import load_dataset
from ..errors import UsageError, exit_on_user_error
from ..predict import load_image, predict_proba
from ..speed import Speed
from ..trained import load_trained


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="lightning-cnn-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="PNG/JPEG files of any size")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by scripts/train.py")
    p.add_argument("--keras-model", metavar="PATH", help="a twin's checkpoint: the converted folder or .keras file "
                   "its run trained (default: the path the checkpoint names)")
    p.add_argument("--test-indices", type=int, nargs="+", default=[], help="indices into the test set")
    p.add_argument("--data-dir", help="data folder for --test-indices")
    p.add_argument("--invert", default="auto", choices=["auto", "yes", "no"],
                   help="make dark-on-light drawings white-on-black (auto: for a model trained on MNIST or "
                   "Fashion-MNIST, if the background is light)")
    p.add_argument("--json", metavar="PATH", help="also write the predictions as JSON")
    p.add_argument("--exact", action="store_true", help="run the network as trained instead of its oneDNN "
                   "inference copy (the default on CPU: BN folded, convolutions fused; equal to float32 rounding)")
    args = p.parse_args(argv)
    if not args.images and not args.test_indices:
        p.error("give image files and/or --test-indices")
    if args.json and Path(args.json).is_dir():
        raise UsageError(f"--json {args.json} is a folder: give a file name, e.g. "
                         f"{Path(args.json) / 'predictions.json'}")
    trained = load_trained(args.checkpoint, args.keras_model)
    names = trained.class_names
    if trained.image_shape is None:
        raise UsageError(f"{args.checkpoint}: the model's input is not an image, and lightning-cnn-predict reads "
                         "images; predict it in Python (the twin takes the arrays its --data .npz held)")
    if args.test_indices and trained.dataset is None:
        raise UsageError(f"--test-indices: {args.checkpoint} was trained on --data (your own data), not a built-in "
                         "data set; give image files instead")

    inputs, labels, failed = [], [], 0
    for path in args.images:
        try:
            inputs.append(load_image(path, trained, args.invert))
            labels.append((path, None))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    if args.test_indices:
        _, (x_test, y_test) = load_dataset(trained.dataset, args.data_dir, allow_partial_test=True)
        for index in args.test_indices:
            if not 0 <= index < len(x_test):
                print(f"error: test index {index} is out of range 0..{len(x_test) - 1}", file=sys.stderr)
                failed += 1
                continue
            inputs.append(x_test[index].reshape(trained.image_shape))
            labels.append((f"test[{index}]", int(np.ravel(y_test[index])[0])))

    records = []
    if inputs:
        speed = Speed(inference_copy=not args.exact)
        probabilities = predict_proba(trained.network, trained.preprocessing, np.stack(inputs), speed=speed,
                                      final_activation=trained.final_activation)
        for (name, truth), probs in zip(labels, probabilities):
            top = int(probs.argmax())
            truth_text = "" if truth is None else f" (true: {names[truth]})"
            print(f"{name}: {names[top]} ({probs[top]:.4f}){truth_text}")
            print("  " + "  ".join(f"{names[i]}: {probs[i]:.4f}" for i in range(len(probs))))
            records.append({"input": name, "predicted": names[top], "probabilities": probs.tolist(),
                            "true": None if truth is None else names[truth]})
    if args.json:
        write_text(args.json, json.dumps(records, indent=2) + "\n")
    return 1 if failed else 0


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
