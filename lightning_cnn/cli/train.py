"""Train a documented model with its documented recipe under PyTorch Lightning, then print its test accuracy.

    lightning-cnn-train                                      # mnist_cnn_small, 5 epochs, CPU or GPU
    lightning-cnn-train --accelerator gpu --precision 16-mixed
    lightning-cnn-train --model mnist_cnn_dropout --devices 2 --strategy ddp --accelerator cpu
    lightning-cnn-train --keras-model my_model.keras --dataset mnist   # your own Keras model, as its PyTorch twin
    lightning-cnn-train --keras-model converted/ --data photos/ --validation-split 0.2   # on your own data
    torchrun --nnodes 2 --nproc-per-node 1 ... -m lightning_cnn.cli.train --num-nodes 2 --strategy ddp  # docs/usage.md

(``python scripts/train.py ...`` is the same command.)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from ..atomic import write_text
from ..errors import UsageError, exit_on_user_error
from ..specs import DEFAULT_MODEL, list_models
from ..run.training import RunConfig, fit_and_test
from . import show_library_messages


def parse_args(argv=None) -> tuple[RunConfig, str | None]:
    """The run configuration and the --metrics-json path."""
    p = argparse.ArgumentParser(prog="lightning-cnn-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keras-model", metavar="PATH", help="train this Keras model's PyTorch twin instead of --model: "
                   "a folder from python -m keras_ref.convert (no TensorFlow needed) or a .keras file; its own "
                   "compile config (optimizer, loss) is used; default 1 epoch, batch 32 (docs/converting.md)")
    p.add_argument("--dataset", choices=["mnist", "fashion_mnist", "cifar10"],
                   help="the data set (needed with --keras-model; default: the documented model's own)")
    p.add_argument("--data", metavar="PATH", help="your own data instead of --dataset: a folder of class subfolders "
                   "of images (ROOT/<class>/*.png, or ROOT/train|val|test/<class>/...) or an .npz with x_train, "
                   "y_train [, x_val, y_val, x_test, y_test] (docs/usage.md, \"Your own data\")")
    p.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                   help="with --data: hold out this fraction for validation, as Keras does (a folder: "
                   "image_dataset_from_directory's shuffled split with --seed; an .npz: fit()'s last fraction)")
    p.add_argument("--image-size", nargs="+", metavar="H W", help="with a --data folder: resize images to H W (or "
                   "HxW); only for a model that takes any size (default: the model's size, else 256x256)")
    p.add_argument("--rescale", default="auto", choices=["auto", "1/255", "none"],
                   help="with --data: the pixels the model sees; auto: x/255 for 8-bit data unless the model has its "
                   "own Rescaling/Normalization layer (then 0..255), a documented model's recipe; float arrays as "
                   "given")
    p.add_argument("--workers", type=int, metavar="N", help="with a --data folder: processes decoding images "
                   "(default: cores - 1, at least 1; 0: in the training process)")
    p.add_argument("--model", help=f"model id (default {DEFAULT_MODEL}); one of: " + ", ".join(list_models()))
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    p.add_argument("--devices", default="auto", help="number of devices, a list, or 'auto'")
    p.add_argument("--num-nodes", type=int, default=1, help="machines in one run, each started by torchrun or "
                   "srun (docs/usage.md); --batch-size is per process")
    p.add_argument("--strategy", default="auto", help="e.g. ddp, ddp_spawn, auto")
    p.add_argument("--precision", default="32-true", choices=["32-true", "16-mixed", "bf16-mixed"])
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder with the data files (else $LIGHTNING_CNN_DATA, caches, download)")
    p.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, as a smoke test")
    p.add_argument("--resume", metavar="PATH", help="checkpoint to continue from (e.g. OUT/checkpoints/last.ckpt)")
    p.add_argument("--metrics-json", metavar="PATH", help="write the final metrics and history as JSON")
    p.add_argument("--logger", choices=["csv", "tensorboard"], help="also log through Lightning's CSVLogger or "
                   "TensorBoardLogger into OUT/logs/ (tensorboard: the [tensorboard] extra)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/MODEL)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (inductor); pays off on CUDA, "
                   "not on a small CPU (see docs/performance.md)")
    p.add_argument("--steps-per-execution", type=int, default=1, metavar="K",
                   help="batches per Lightning step, one optimizer step each (Keras's steps_per_execution): "
                   "the same training, less per-step overhead; progress bar and callbacks count groups")
    p.add_argument("--init", choices=["keras", "torch"], help="documented models' initialisers (default: Keras's)")
    p.add_argument("--weights", default="auto", help="cifar10_vgg16_transfer: ImageNet weights (.safetensors from "
                   "scripts/convert_vgg16_weights.py, or torchvision's .pth), 'auto' to search the caches, or 'none'")
    p.add_argument("--train-images", metavar="N|all", help="train on the first N training images, or 'all' "
                   "(default: the recipe's; cifar10_cnn's is 300, as in its tutorial)")
    p.add_argument("--allow-partial-test", action="store_true",
                   help="accept a test set shorter than the official one (reports say so)")
    for stage in ("train", "val", "test"):
        p.add_argument(f"--limit-{stage}-batches", type=float, help="Lightning's limit: a fraction or a count")
    args = vars(p.parse_args(argv))
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if args[key] is not None and args[key] >= 1:
            args[key] = int(args[key])
    if args["keras_model"] and args["model"]:
        p.error("give --model (a documented model) or --keras-model (your own), not both")
    args["model"] = args["model"] or DEFAULT_MODEL
    args["image_size"] = _image_size(args["image_size"])
    metrics_json = args.pop("metrics_json")
    if metrics_json and Path(metrics_json).is_dir():
        raise UsageError(f"--metrics-json {metrics_json} is a folder: give a file name, e.g. "
                         f"{Path(metrics_json) / 'metrics.json'}")
    return RunConfig(**{k: v for k, v in args.items() if k in {f.name for f in fields(RunConfig)}}), metrics_json


def _image_size(words: list[str] | None) -> tuple[int, int] | None:
    """--image-size H W, or HxW."""
    if words is None:
        return None
    parts = " ".join(words).lower().replace("x", " ").split()
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UsageError(f"--image-size {' '.join(words)}: give a height and a width in pixels, e.g. "
                         "--image-size 180 180 or --image-size 180x180")
    return int(parts[0]), int(parts[1])


def _main(argv) -> int:
    config, metrics_json = parse_args(argv)
    show_library_messages()
    result = fit_and_test(config)
    if rank_zero_only.rank == 0:
        partial = f" (first {result['test_samples']:,} test images)" if result["test_is_partial"] else ""
        if result["test_split"] == "val":
            partial = f" (on the {result['test_samples']:,} validation samples: the data has no test split)"
        if result["test_split"] is None:
            print("Trained; not tested: the data has no test or validation split (add test/ or val/ folders, "
                  "x_test/y_test, or --validation-split)", flush=True)
        else:
            print(f"Test loss: {result['test_loss']:.4f} - Test accuracy: {100 * result['test_accuracy']:.2f}%"
                  f"{partial}", flush=True)
        if metrics_json:
            result["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
            write_text(metrics_json, json.dumps(result, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
