"""Conversion time and inference speed of keras_ref.convert's twins against the Keras originals, on this CPU.

    python scripts/bench_convert.py                                  # ResNet50 (224x224) and MobileNetV2-0.35 (64x64)
    python scripts/bench_convert.py --models ResNet50 --repeats 5 --batch 32
    python scripts/bench_convert.py --threads 1     # on a loaded machine: OpenMP threads that wait for a
                                                    # descheduled sibling slow torch far more than TF's pool

For each model (``weights=None``): the seconds ``convert()`` takes (graph walk, twin build, weight copy; the
Keras model is built before the clock starts), then inference images/s at ``--batch`` of Keras
(``predict_on_batch``: its compiled tf.function) and of the twin (``torch.inference_mode``), one warm-up call
each, then ``--repeats`` rounds alternating the two; the ratio printed is the median of the per-round ratios (a
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

    import keras_ref  # noqa: F401  (lightning_cnn's TensorFlow/torch guard first)
    import numpy as np
    import tensorflow as tf
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    import keras
    from keras_ref.convert import compare, convert, to_twin_input
    from lightning_cnn.converted import fuse_for_inference

    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), keras {keras.__version__}, "
          f"batch {args.batch}, {args.repeats} rounds")
    for name in args.models:
        model = build(name, keras)
        started = time.perf_counter()
        twin = convert(model)
        seconds = time.perf_counter() - started
        x = rng.random((args.batch, SIZES[name], SIZES[name], 3), dtype=np.float32)
        (report,) = compare(model, twin, [x[:4]])
        fused = fuse_for_inference(twin)
        (fused_report,) = compare(model, fused, [x[:4]])
        xt = to_twin_input(x)

        def keras_call():
            model.predict_on_batch(x)

        def twin_call():
            with torch.inference_mode():
                twin(xt)

        def fused_call():
            with torch.inference_mode():
                fused(xt)

        def timed(fn):
            started = time.perf_counter()
            fn()
            return args.batch / (time.perf_counter() - started)

        keras_call(), twin_call(), fused_call()  # warm-up (tf.function tracing, allocator)
        rounds = [(timed(keras_call), timed(twin_call), timed(fused_call)) for _ in range(args.repeats)]
        keras_ips, twin_ips, fused_ips = (statistics.median(r[i] for r in rounds) for i in range(3))
        ratio = statistics.median(r[1] / r[0] for r in rounds)
        fused_ratio = statistics.median(r[2] / r[0] for r in rounds)
        print(f"{name} ({SIZES[name]}x{SIZES[name]}, {sum(p.numel() for p in twin.parameters()):,} parameters): "
              f"convert {seconds:.2f} s; max |Keras - twin| {report['max_abs_diff']:.2g} (BN-folded "
              f"{fused_report['max_abs_diff']:.2g}); inference images/s Keras {keras_ips:.1f}, twin {twin_ips:.1f} "
              f"({ratio:.2f}x Keras), BN-folded twin {fused_ips:.1f} ({fused_ratio:.2f}x Keras)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
