"""Compare this project's Keras -> PyTorch converter with tf2onnx+onnx2torch and Keras 3's torch backend.

    python scripts/compare_converters.py                       # all six models, writes reports/converters.{md,json}
    python scripts/compare_converters.py --models ResNet50 --size 224 --out /tmp/cmp

The peers come from the optional extra: pip install -e ".[keras,compare]"; a peer that is missing is reported as
"not installed". The logic lives in keras_ref/compare.py.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from keras_ref.compare import MODELS, TOOLS, run  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=96, help="input size of every model but MobileNetV2-0.35 "
                        "(always 64); default 96 keeps the run short on a small CPU")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    parser.add_argument("--repeats", type=int, default=3, help="timed inference calls per tool")
    parser.add_argument("--data-dir", help="folder with the CIFAR-10 data (else $LIGHTNING_CNN_DATA, caches)")
    parser.add_argument("--out", default="reports", help="folder for converters.md and converters.json")
    args = parser.parse_args(argv)
    run(args.models, args.size, args.out, args.data_dir, args.repeats, tuple(args.tools),
        command="python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    print(f"wrote {Path(args.out) / 'converters.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
