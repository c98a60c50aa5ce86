"""Conversion time and inference speed of keras_ref.convert's twins against the Keras originals, on this CPU.

    python scripts/bench_convert.py                                  # ResNet50 (224x224) and MobileNetV2-0.35 (64x64)
    python scripts/bench_convert.py --models ResNet50 --repeats 5 --batch 32
    python scripts/bench_convert.py --threads 1     # on a loaded machine: OpenMP threads that wait for a
                                                    # descheduled sibling slow torch far more than TF's pool

For each model (``weights=None``): the seconds ``convert()`` takes (graph walk, twin build, weight copy; the
Keras model is built before the clock starts), then inference images/s at ``--batch`` of Keras
(``predict_on_batch``: its compiled tf.function), of the twin, of its BN-folded copy (``fuse_for_inference``) and
of ``prepare_for_inference(twin)`` (BN folded, channels-last weights), each torch call under
``torch.inference_mode``; one warm-up call each, then ``--repeats`` rounds calling all four back to back; each
ratio printed is the median of the per-round ratios (a
shared VM's speed drifts, so ratios are taken between calls made back to back). Both frameworks share this
process and its cores. Nothing is asserted: the numbers are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

SIZES = {"ResNet50": 224, "MobileNetV2": 64, "EfficientNetB0": 224, "VGG16": 224, "DenseNet121": 224,
         "NASNetMobile": 224}


def build(name: str, keras):
    kwargs = dict(weights=None, input_shape=(SIZES[name], SIZES[name], 3))
    if name == "MobileNetV2":
        kwargs["alpha"] = 0.35
    return getattr(keras.applications, name)(**kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50", "MobileNetV2"], choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="intra-op threads for both frameworks (default: each its own)")
    args = parser.parse_args(argv)

    from keras_ref import load_tensorflow

    keras = load_tensorflow()  # the TensorFlow/torch guard, then TensorFlow
    import numpy as np
    import tensorflow as tf
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    from keras_ref.convert import compare, convert, to_twin_input
    from lightning_cnn.converted import fuse_for_inference, prepare_for_inference

    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), keras {keras.__version__}, "
          f"batch {args.batch}, {args.repeats} rounds")
    for name in args.models:
        model = build(name, keras)
        started = time.perf_counter()
        twin = convert(model)
        seconds = time.perf_counter() - started
        x = rng.random((args.batch, SIZES[name], SIZES[name], 3), dtype=np.float32)
        variants = {"twin": twin, "BN-folded twin": fuse_for_inference(twin),
                    "prepare_for_inference": prepare_for_inference(twin)}
        diffs = {label: compare(model, m, [x[:4]])[0]["max_abs_diff"] for label, m in variants.items()}
        xt = to_twin_input(x)

        def torch_call(module):
            def call():
                with torch.inference_mode():
                    module(xt)
            return call

        calls = [lambda: model.predict_on_batch(x)] + [torch_call(m) for m in variants.values()]

        def timed(fn):
            started = time.perf_counter()
            fn()
            return args.batch / (time.perf_counter() - started)

        for call in calls:  # warm-up (tf.function tracing, allocator)
            call()
        rounds = [[timed(call) for call in calls] for _ in range(args.repeats)]
        keras_ips = statistics.median(r[0] for r in rounds)
        parts = [f"Keras {keras_ips:.1f} images/s"]
        for i, label in enumerate(variants, start=1):
            ratio = statistics.median(r[i] / r[0] for r in rounds)
            parts.append(f"{label} {statistics.median(r[i] for r in rounds):.1f} ({ratio:.2f}x Keras, max |diff| "
                         f"{diffs[label]:.2g})")
        print(f"{name} ({SIZES[name]}x{SIZES[name]}, {sum(p.numel() for p in twin.parameters()):,} parameters): "
              f"convert {seconds:.2f} s; " + "; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
