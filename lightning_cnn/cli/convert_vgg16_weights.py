"""Convert Keras's VGG16 ImageNet weights (no top) into a safetensors file PyTorch users load without TensorFlow.

    keras-vgg16-convert --h5 ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5

(``python scripts/convert_vgg16_weights.py ...`` is the same command; it needs the ``[keras]`` extra.)
The conversion goes through the parity layer (HWIO -> OIHW, one rule per layer kind) and checks the result: the
PyTorch features must reproduce Keras's VGG16 features on a batch within --atol, or nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import exit_on_user_error
from ..nets.pretrained import converted_weights_path, find_vgg16_weights


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="keras-vgg16-convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--h5", help="the Keras weights file (default: look in the Keras cache ~/.keras/models/)")
    p.add_argument("--out", default=str(converted_weights_path()), help="default: %(default)s")
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)
    try:
        h5 = find_vgg16_weights(args.h5 or "auto", framework="keras")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from keras_ref.vgg16_weights import convert_vgg16_weights  # loads TensorFlow

    diff = convert_vgg16_weights(h5, args.out, args.atol)
    print(f"wrote {args.out} (max |Keras - PyTorch| on 4 inputs, probabilities: {diff:.3g})")
    return 0


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
