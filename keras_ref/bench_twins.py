"""Converted twins against their Keras originals on this CPU: inference and training images/s, as ratios.

    lightning-cnn-bench --acceptance                           # every model below, 1 and 2 threads
    python -m keras_ref.bench_twins --models ResNet50 --threads 1 --batches 8 --rounds 3 --no-train

Models: ``keras.applications`` architectures, ``weights=None``, 10 classes, random weights
(``keras_ref.compare.randomize``) with each BatchNormalization's statistics calibrated on real images, then perturbed
(``keras_ref.compare.calibrate_batchnorm``, as the parity tests do: arbitrary random statistics make a deep net
chaotic, NASNetMobile's outputs ~1e-20), at CPU-sized inputs (``SIZES``).

- Inference: Keras ``predict_on_batch`` (its compiled tf.function) against the twin (``convert()``) and the
  prepared copy (``lightning_cnn.converted.prepare_for_inference``), each torch call under
  ``torch.inference_mode``, at each batch size; one warm-up call each, then ``--rounds`` rounds calling all of
  them back to back. A ratio is the median over rounds of that round's ratio (a shared machine's speed drifts, so
  only calls made back to back are compared). The calls run inside ``freed_memory_retained()``, as
  ``lightning-cnn-predict``'s do (``Speed.cpu_tuning``): glibc keeps freed memory, as TensorFlow's own allocator
  does for Keras, instead of re-faulting every large activation (Keras measured unchanged by it).
- Ceiling: each model's float32 operations per image (``gflop_per_image``) times Keras's images/s is Keras's
  GFLOP/s; the fastest rate seen on this CPU in the run (``fastest_rate``) over it bounds what any float32 copy
  could reach against Keras in that cell, and the report prints it beside the ratios.
- Training at batch 32 on real CIFAR-10 training images (resized, bilinear): Keras ``fit`` (Adam, sparse
  categorical cross-entropy) against the twin trained by the project's ``CompiledTwinModule`` with the same
  compile config under ``lightning_cnn.run.training.make_trainer``; images/s is 32 over the median step time, from
  timestamps taken at every batch end (fit/Trainer set-up excluded), rounds interleaved as above.

Both frameworks share one process per thread count (TensorFlow fixes its thread pools when it starts), with
``torch.set_num_threads(n)`` and TensorFlow's intra- and inter-op threads both ``n``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (keras.applications builder, keyword arguments, input size): CPU-sized inputs (96, as
# reports/converters.md; MobileNetV2-0.35 at 64), each at least the architecture's minimum.
SIZES = {
    "MobileNetV2-0.35": ("MobileNetV2", {"alpha": 0.35}, 64),
    "ResNet50": ("ResNet50", {}, 96),
    "EfficientNetB0": ("EfficientNetB0", {}, 96),
    "VGG16": ("VGG16", {}, 96),
    "DenseNet121": ("DenseNet121", {}, 96),
    "NASNetMobile": ("NASNetMobile", {}, 96),
    "Xception": ("Xception", {}, 96),
    "InceptionV3": ("InceptionV3", {}, 96),
    "ResNet50V2": ("ResNet50V2", {}, 96),
    "EfficientNetV2B0": ("EfficientNetV2B0", {}, 96),
    "VGG19": ("VGG19", {}, 96),
}
CLASSES = 10
CALIBRATION_IMAGES = 16  # real images the BN statistics are taken from (as the parity tests)
TRAIN_BATCH = 32


def _median_ratio(rounds: list[dict], key: str, base: str) -> float:
    return statistics.median(r[key] / r[base] for r in rounds)


def best_rate() -> float:
    """The fastest float32 GFLOP/s seen on this CPU at torch's thread count: the matrix product
    (``lightning_cnn.benchmark.matmul_peak_gflops``: MKL's or oneDNN's, whichever is faster) or oneDNN's 3x3
    convolution (256 to 256 channels, 32x24x24 channels-last; median of 9 calls after 3 warm-ups)."""
    import torch

    from lightning_cnn.benchmark import matmul_peak_gflops

    x = torch.randn(32, 256, 24, 24).contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    seconds = []
    for _ in range(12):
        started = time.perf_counter()
        torch.ops.mkldnn._convolution_pointwise(x, kernel, None, [1, 1], [1, 1], [1, 1], 1, "none", [], "")
        seconds.append(time.perf_counter() - started)
    convolution = 2 * 32 * 24 * 24 * 256 * 256 * 9 / statistics.median(seconds[3:]) / 1e9
    return max(convolution, matmul_peak_gflops("float32", "cpu"))


def gflop_per_image(twin, size: int) -> float:
    """The convolutions' and matrix products' floating-point operations of one image (2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        twin.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def inference(name, keras_model, twin, variants: dict, batches, rounds: int, images) -> list[dict]:
    """One record per batch size: images/s of Keras and each torch variant, and their per-round ratios."""
    import numpy as np
    import torch

    from .convert import to_twin_input

    records = []
    for batch in batches:
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        xt = to_twin_input(x)

        def torch_call(module):
            def call():
                with torch.inference_mode():
                    module(xt)
            return call

        calls = {"keras": lambda: keras_model.predict_on_batch(x),
                 **{label: torch_call(m) for label, m in variants.items()}}

        def timed(call):
            started = time.perf_counter()
            call()
            return batch / (time.perf_counter() - started)

        for call in calls.values():  # warm-up: tf.function tracing, oneDNN primitives, allocator
            call()
        per_round = [{label: timed(call) for label, call in calls.items()} for _ in range(rounds)]
        record = {"model": name, "batch": batch, "rounds": per_round}
        record.update({f"{label}_images_per_s": statistics.median(r[label] for r in per_round) for label in calls})
        record.update({f"{label}_vs_keras": _median_ratio(per_round, label, "keras") for label in variants})
        records.append(record)
        print(f"  infer {name} batch {batch}: Keras {record['keras_images_per_s']:.1f} img/s; " +
              "; ".join(f"{label} {record[label + '_images_per_s']:.1f} ({record[label + '_vs_keras']:.2f}x)"
                        for label in variants), flush=True)
    return records


def _train_images(size: int, n: int, data_dir=None):
    """The first ``n`` real CIFAR-10 training images resized to ``size`` (bilinear), in [0, 1], and labels."""
    import numpy as np
    import tensorflow as tf

    from lightning_cnn.data import load_dataset

    (x, y), _ = load_dataset("cifar10", data_dir, allow_partial_test=True)
    x = tf.image.resize(x[:n].astype("float32") / 255.0, (size, size)).numpy()
    return np.ascontiguousarray(x), np.ravel(y[:n]).astype("int64")


def training(name, keras_model, twin, steps: int, rounds: int, size: int, data_dir=None) -> dict:
    """Keras ``fit`` vs the twin through ``CompiledTwinModule``: images/s at batch 32 from per-step times."""
    import keras
    import lightning as L
    import torch

    from lightning_cnn.recipes.keras_compile import CompiledTwinModule, KerasCompile
    from lightning_cnn.run.training import make_trainer

    from .convert import to_twin_input

    warmup = 2
    x, y = _train_images(size, TRAIN_BATCH * (steps + warmup), data_dir)
    keras_model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    compile_config = KerasCompile.from_config(keras_model.get_compile_config())
    twin.train()
    module = CompiledTwinModule(twin, compile_config)
    data = torch.utils.data.TensorDataset(to_twin_input(x), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(data, batch_size=TRAIN_BATCH, shuffle=False)

    class KerasSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    class LightningSteps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            stamps.append(time.perf_counter())

    def step_seconds() -> float:
        return statistics.median(b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:]))

    per_round = []
    for _ in range(rounds):
        stamps: list[float] = []
        keras_model.fit(x, y, batch_size=TRAIN_BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[KerasSteps()])
        keras_ips = TRAIN_BATCH / step_seconds()
        stamps = []
        trainer = make_trainer(accelerator="cpu", devices=1, callbacks=[LightningSteps()], max_epochs=1)
        trainer.fit(module, loader)
        per_round.append({"keras": keras_ips, "twin": TRAIN_BATCH / step_seconds()})
    record = {"model": name, "batch": TRAIN_BATCH, "steps": steps, "rounds": per_round,
              "keras_images_per_s": statistics.median(r["keras"] for r in per_round),
              "twin_images_per_s": statistics.median(r["twin"] for r in per_round),
              "twin_vs_keras": _median_ratio(per_round, "twin", "keras")}
    print(f"  train {name} batch {TRAIN_BATCH}: Keras fit {record['keras_images_per_s']:.1f} img/s; twin "
          f"{record['twin_images_per_s']:.1f} ({record['twin_vs_keras']:.2f}x)", flush=True)
    return record


def worker(args) -> dict:
    """Every model at one thread count, in this process."""
    from ._tf import load_tensorflow

    keras = load_tensorflow()  # the TensorFlow/torch guard, then TensorFlow
    import numpy as np
    import tensorflow as tf
    import torch

    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from lightning_cnn.converted import prepare_for_inference
    from lightning_cnn.speed.cpu_tuning import freed_memory_retained

    from .compare import calibrate_batchnorm, model_py, randomize, real_images
    from .convert import convert, to_twin_input

    result = {"threads": args.threads, "torch": torch.__version__, "keras": keras.__version__,
              "tensorflow": tf.__version__, "inference": [], "training": [],
              "load_average": [os.getloadavg()[0], None], "utc": [time.strftime("%Y-%m-%d %H:%M", time.gmtime()), None],
              "best_gflops": best_rate()}
    for name in args.models:
        builder, kwargs, size = SIZES[name]
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, builder)(weights=None, input_shape=(size, size, 3), classes=CLASSES,
                                                     **kwargs)
        images = real_images(size, args.data_dir, max(*args.batches, CALIBRATION_IMAGES))
        randomize(model)
        calibrate_batchnorm(model, images[:CALIBRATION_IMAGES])
        twin = convert(model)
        source = model_py(model, twin)
        variants = {"twin": twin, "model.py": source, "prepared": prepare_for_inference(twin),
                    "model.py prepared": prepare_for_inference(source)}
        with torch.no_grad():
            expected = model.predict_on_batch(images[:4])
            diffs = {label: float(np.abs(m.eval()(to_twin_input(images[:4])).numpy() - expected).max())
                     for label, m in variants.items()}
        print(f"{name} ({size}x{size}, {args.threads} thread(s)): largest |output| {np.abs(expected).max():.1e}, "
              "max |diff| vs Keras " +
              ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()), flush=True)
        with freed_memory_retained():  # as lightning-cnn-predict runs; TensorFlow pools its own memory anyway
            records = inference(name, model, twin, variants, args.batches if args.infer else [], args.rounds, images)
        gflop = gflop_per_image(twin, size)
        for record in records:
            record.update(size=size, max_abs_diff=diffs, gflop_per_image=gflop)
            result["inference"].append(record)
        if args.train:
            record = training(name, model, twin, args.train_steps, args.rounds, size, args.data_dir)
            record["size"] = size
            result["training"].append(record)
        result["load_average"][1] = os.getloadavg()[0]
        result["utc"][1] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        print("PARTIAL " + json.dumps(result), flush=True)  # the parent writes the report after every model
    return result


def _load_note(result: dict) -> str:
    load = result.get("load_average")
    where = f"{result['threads']} thread(s)"
    if not load:
        return f"{where}: not recorded"
    return f"{where}: {load[0]:.2f} -> {load[1]:.2f} ({result['utc'][0]} to {result['utc'][1]} UTC)"


def fastest_rate(result: dict) -> float | None:
    """The fastest float32 GFLOP/s seen at one thread count: ``best_rate``'s kernels, Keras and every torch variant
    on every model and batch (a model's convolutions can outrun both kernels: Keras's VGG16 at batch 32 did)."""
    if not result.get("best_gflops"):
        return None
    rates = [r["gflop_per_image"] * r[key] for r in result["inference"] if "gflop_per_image" in r
             for key in r if key.endswith("_images_per_s")]
    return max([result["best_gflops"], *rates])


def _ceiling_cells(record: dict, fastest: float | None) -> str:
    """Keras's GFLOP/s and the ceiling (see ``render``), or dashes for a run that did not record them."""
    if not fastest or "gflop_per_image" not in record:
        return "– | –"
    keras_gflops = record["gflop_per_image"] * record["keras_images_per_s"]
    return f"{keras_gflops:.0f} | {fastest / keras_gflops:.2f}×"


def render(results: list[dict], command: str, machine: str) -> str:
    fastest = [fastest_rate(result) for result in results]  # one per thread count
    lines = ["# Converted twins vs Keras on this CPU", "",
             f"Command: `{command}`  ", f"Machine: {machine}; torch {results[0]['torch']}, keras "
             f"{results[0]['keras']}, tensorflow {results[0]['tensorflow']}", "",
             "Each ratio is the median over rounds of the ratio between calls made back to back in one process "
             "(see keras_ref/bench_twins.py): absolute images/s carry the machine's noise, ratios much less. "
             "The machine's 1-minute load average (other jobs included) at the start and end of each thread "
             "count's run: " + "; ".join(_load_note(r) for r in results) + ".", "",
             "## Inference (images/s; ratio to Keras `predict_on_batch`)", "",
             "Ceiling: the fastest float32 rate seen on this CPU in the run (`fastest_rate`: oneDNN's 3x3 "
             "convolution or matrix product, or any model and batch on either side; " +
             ", ".join(f"{rate:.0f} GFLOP/s at {r['threads']} thread(s)" for r, rate in zip(results, fastest)
                       if rate) +
             ") over Keras's own GFLOP/s (the convolutions' and matrix products' operations, `gflop_per_image`, "
             "times its images/s): the ratio a float32 copy would reach if every one of its operations ran at that "
             "rate and nothing else cost time. Where it is under 1.3, a 1.3x target asks for more than this CPU "
             "has shown it can do.", "",
             "| model | input | threads | batch | Keras | twin | model.py | prepared | prepared model.py | twin / K "
             "| model.py / K | prepared / K | prepared model.py / K | Keras GFLOP/s | ceiling |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for result, rate in zip(results, fastest):
        for r in result["inference"]:
            labels = ("twin", "model.py", "prepared", "model.py prepared")
            lines.append(f"| {r['model']} | {r['size']} | {result['threads']} | {r['batch']} | "
                         f"{r['keras_images_per_s']:.1f} | "
                         + " | ".join(f"{r[label + '_images_per_s']:.1f}" for label in labels) + " | "
                         + " | ".join(f"{r[label + '_vs_keras']:.2f}×" for label in labels) + " | "
                         + _ceiling_cells(r, rate) + " |")
    training_rows = [(result["threads"], r) for result in results for r in result["training"]]
    if training_rows:
        lines += ["", f"## Training at batch {TRAIN_BATCH} (images/s; Keras `fit` vs the twin through "
                  "`CompiledTwinModule`, Adam, real CIFAR-10 resized)", "",
                  "| model | input | threads | Keras fit | twin | twin / Keras |", "|---|---|---:|---:|---:|---:|"]
        for threads, r in training_rows:
            lines.append(f"| {r['model']} | {r['size']} | {threads} | {r['keras_images_per_s']:.1f} | "
                         f"{r['twin_images_per_s']:.1f} | {r['twin_vs_keras']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-cnn-bench --acceptance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per round (after 2)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="inference only")
    parser.add_argument("--train-threads", nargs="+", type=int, default=[2],
                        help="thread counts at which training is also measured")
    parser.add_argument("--no-infer", dest="infer", action="store_false", help="training only")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only write --out from the JSON of earlier "
                        "runs (e.g. models or thread counts run side by side), each run's command listed")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="reports/bench_twins.md", help="markdown report; JSON beside it")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.merge:
        from lightning_cnn.analysis import machine_description
        from lightning_cnn.atomic import write_text

        runs = [json.loads(Path(path).read_text()) for path in args.merge]
        table = render([r for run in runs for r in run["results"]], "`; `".join(run["command"] for run in runs),
                       machine_description())
        write_text(args.out, table)
        write_text(Path(args.out).with_suffix(".json"), json.dumps({"runs": runs}, indent=2) + "\n")
        print(table)
        return 0
    if args.worker:
        args.threads = args.threads[0]
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    if min(args.threads + args.batches) < 1 or args.rounds < 1 or args.train_steps < 2:
        parser.error("--threads, --batches and --rounds must be at least 1, --train-steps at least 2")
    from lightning_cnn.analysis import machine_description
    from lightning_cnn.atomic import write_text

    command = ("lightning-cnn-bench --acceptance " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    out = Path(args.out)

    def write(results: list[dict]) -> str:
        table = render(results, command, machine_description())
        write_text(out, table)
        write_text(out.with_suffix(".json"), json.dumps({"command": command, "results": results}, indent=2) + "\n")
        return table

    results = []
    for threads in args.threads:
        cmd = [sys.executable, "-m", "keras_ref.bench_twins", "--worker", "--threads", str(threads), "--models",
               *args.models, "--batches", *map(str, args.batches), "--rounds", str(args.rounds),
               "--train-steps", str(args.train_steps)]
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        cmd += [] if args.train and threads in args.train_threads else ["--no-train"]
        cmd += [] if args.infer else ["--no-infer"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": str(threads)}
        print(f"== {threads} thread(s)", flush=True)
        line = None
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as worker_process:
            for out_line in worker_process.stdout:  # progress as it comes, the result at the end
                if out_line.startswith("RESULT "):
                    line = out_line
                elif out_line.startswith("PARTIAL "):
                    write([*results, json.loads(out_line[8:])])
                else:
                    print(out_line, end="", flush=True)
        if worker_process.returncode or line is None:
            print(f"error: the {threads}-thread run failed (exit {worker_process.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(line[7:]))
    print("\n" + write(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
