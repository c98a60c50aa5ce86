"""Convert Keras's VGG16 ImageNet weights (no top) into a safetensors file PyTorch users load without TensorFlow.

    python scripts/convert_vgg16_weights.py --h5 ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5

The conversion goes through the parity layer (HWIO -> OIHW, one rule per layer kind) and checks the result: the
PyTorch features must reproduce Keras's VGG16 features on a batch within --atol, or nothing is written.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

import keras_ref  # noqa: E402  (loads lightning_cnn before TensorFlow)
import lightning_cnn  # noqa: E402
import torch  # noqa: E402

from keras_ref.parity import copy_weights  # noqa: E402
from lightning_cnn.atomic import atomic_path  # noqa: E402
from lightning_cnn.pretrained import converted_weights_path, find_vgg16_weights  # noqa: E402


def convert(h5, out, atol=1e-5, seed=0) -> float:
    from safetensors.torch import save_file

    keras_model = keras_ref.build_model("cifar10_vgg16_transfer", seed=seed, weights=h5)
    torch_model = lightning_cnn.build_model("cifar10_vgg16_transfer", seed=seed)
    copy_weights(keras_model, torch_model)
    x = np.random.default_rng(seed).uniform(-124, 152, (4, 32, 32, 3)).astype("float32")  # caffe-range inputs
    expected = keras_model.predict(x, verbose=0)
    with torch.no_grad():  # the Lightning model returns logits; the Keras model ends in softmax
        got = torch.softmax(torch_model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)), dim=1).numpy()
    diff = float(np.max(np.abs(got - expected)))
    if diff > atol:
        raise SystemExit(f"error: converted weights differ from Keras by {diff:.3g} > {atol:g}; nothing written")
    state = {f"features.{k}": v.contiguous() for k, v in torch_model.features.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"source": Path(h5).name, "converted_by": "lightning_cnn"})
    return diff


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--h5", help="the Keras weights file (default: look in the Keras cache ~/.keras/models/)")
    p.add_argument("--out", default=str(converted_weights_path()), help="default: %(default)s")
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)
    try:
        h5 = find_vgg16_weights(args.h5 or "auto", framework="keras")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    diff = convert(h5, args.out, args.atol)
    print(f"wrote {args.out} (max |Keras - PyTorch| on 4 inputs, probabilities: {diff:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
