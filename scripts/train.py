"""Train a documented model with its documented recipe under PyTorch Lightning, then print its test accuracy.

    python scripts/train.py                                  # mnist_cnn_small, 5 epochs, CPU or GPU
    python scripts/train.py --accelerator gpu --precision 16-mixed
    python scripts/train.py --model mnist_cnn_dropout --devices 2 --strategy ddp --accelerator cpu
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lightning_cnn.errors import exit_on_user_error  # noqa: E402
from lightning_cnn.specs import DEFAULT_MODEL, list_models  # noqa: E402
from lightning_cnn.training import RunConfig, run  # noqa: E402


def parse_args(argv=None) -> RunConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id (default {DEFAULT_MODEL}); one of: "
                   + ", ".join(list_models()))
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    p.add_argument("--devices", default="auto", help="number of devices, a list, or 'auto'")
    p.add_argument("--strategy", default="auto", help="e.g. ddp, ddp_spawn, auto")
    p.add_argument("--precision", default="32-true", choices=["32-true", "16-mixed", "bf16-mixed"])
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder with the data files (else $LIGHTNING_CNN_DATA, caches, download)")
    p.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, as a smoke test")
    p.add_argument("--resume", metavar="PATH", help="checkpoint to continue from (e.g. OUT/checkpoints/last.ckpt)")
    p.add_argument("--metrics-json", metavar="PATH", help="write the final metrics and history as JSON")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/MODEL)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (inductor); pays off on CUDA, "
                   "not on a small CPU (see README, Benchmarks)")
    p.add_argument("--steps-per-execution", type=int, default=1, metavar="K",
                   help="batches per Lightning step, one optimizer step each (Keras's steps_per_execution): "
                   "the same training, less per-step overhead; progress bar and callbacks count groups")
    p.add_argument("--init", default="keras", choices=["keras", "torch"], help="initialisers (default: Keras's)")
    p.add_argument("--weights", default="auto", help="cifar10_vgg16_transfer: ImageNet weights (.safetensors from "
                   "scripts/convert_vgg16_weights.py, or torchvision's .pth), 'auto' to search the caches, or 'none'")
    p.add_argument("--train-images", metavar="N|all", help="train on the first N training images, or 'all' "
                   "(default: the recipe's; cifar10_cnn's is 300, as in document 003)")
    p.add_argument("--allow-partial-test", action="store_true",
                   help="accept a test set shorter than the official one (reports say so)")
    for stage in ("train", "val", "test"):
        p.add_argument(f"--limit-{stage}-batches", type=float, help="Lightning's limit: a fraction or a count")
    args = vars(p.parse_args(argv))
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if args[key] is not None and args[key] >= 1:
            args[key] = int(args[key])
    return RunConfig(**args)


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
