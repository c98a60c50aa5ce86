"""Training and inference throughput: Keras 3 (model.fit) vs a plain PyTorch loop vs this project's Lightning.

    python scripts/bench.py --data-dir ../shared/data                       # the issue's table, float32
    python scripts/bench.py --models mnist_cnn_small --batch-sizes 32 --precision bf16-mixed
    python scripts/bench.py --smoke                                         # seconds-long CI check
    python scripts/bench.py --compile --contenders plain_torch lightning    # both torch loops under torch.compile
    python scripts/bench.py --floor                                         # each loop's own cost per step
    python scripts/bench.py --steps-per-execution 8   # Keras and Lightning both take 8 optimizer steps per call
    python scripts/bench.py --accelerator gpu --batch-sizes 32 512 --precision 32-true 16-mixed bf16-mixed \
        --contenders plain_torch lightning                                  # a CUDA machine without TensorFlow

Each (model, batch size, precision, contender) runs in its own process, one after another, so frameworks never
share thread pools and peak memory is per contender. Throughput is images/s of steady-state training: after
warm-up steps, the median of several timed windows. Inference is predict over the 10,000 test images.
On a GPU the data sit on the device and every step's timestamp waits for the device, on both torch contenders.
A shared virtual machine's speed drifts by tens of percent from minute to minute, so the contenders run
round-robin ``--repeats`` times: the table shows each one's median run (every run is in the JSON), and each ratio
is the median of the rounds' ratios, each taken between runs made back to back.
``--steps-per-execution K`` gives Keras ``compile(steps_per_execution=K)`` and Lightning its equivalent (K batches
per Lightning step); a plain loop has no per-call overhead to spread, so it is unchanged. Timestamps are then
taken once per K steps, and windows and warm-up are rounded up to whole groups.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

CONTENDERS = ("keras", "plain_torch", "lightning")
MEMORY_FORMATS = {"auto": None, "channels_last": True, "contiguous": False}


def _windows(stamps: list[float], batch_size: int, warmup: int, window: int) -> float:
    """Median images/s over consecutive windows of ``window`` steps after ``warmup`` steps."""
    rates = [window * batch_size / (stamps[i + window] - stamps[i])
             for i in range(warmup, len(stamps) - window, window)]
    return statistics.median(rates)


def _train_arrays(spec, data_dir, n):
    from lightning_cnn.data import load_dataset, preprocess

    (x, y), (x_test, _) = load_dataset(spec.dataset, data_dir, allow_partial_test=True)
    return preprocess(x[:n], spec.preprocessing), y[:n].reshape(-1).astype("int64"), \
        preprocess(x_test, spec.preprocessing)


def _torch_tensors(x, y, x_test, device, channels_last=False):
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    as_nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(device).contiguous(memory_format=fmt)  # noqa: E731
    return as_nchw(x), torch.from_numpy(y).to(device), as_nchw(x_test)


def _stamp(device) -> float:
    """A timestamp taken once the device has finished the work queued so far (CUDA runs asynchronously)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


AUTOCAST_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


def bench_keras(spec, x, y, x_test, batch_size, precision, steps, warmup, window, steps_per_execution):
    import keras

    import keras_ref
    from keras_ref.training import compile_model

    if precision in AUTOCAST_DTYPES:
        keras.mixed_precision.set_global_policy("mixed_" + AUTOCAST_DTYPES[precision])
    model = keras_ref.build_model(spec.id, seed=0)
    compile_model(model, spec, steps_per_execution=steps_per_execution)
    labels = keras.utils.to_categorical(y, 10) if spec.recipe.loss == "categorical_crossentropy" else y
    stamps: list[float] = []

    class Stamp(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # once per execution of steps_per_execution steps
            stamps.append(time.perf_counter())

    stamps.append(time.perf_counter())
    model.fit(x, labels, batch_size=batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[Stamp()])
    model.predict(x_test[:batch_size * 4], batch_size=batch_size, verbose=0)  # warm the predict function
    start = time.perf_counter()
    model.predict(x_test, batch_size=batch_size, verbose=0)
    return _grouped_windows(stamps, batch_size, warmup, window, steps_per_execution), \
        len(x_test) / (time.perf_counter() - start)


def _grouped_windows(stamps, batch_size, warmup, window, steps_per_execution):
    """``_windows`` for stamps taken once per group of ``steps_per_execution`` steps (warm-up and window in steps,
    whole groups: ``worker`` makes them multiples)."""
    k = steps_per_execution
    return _windows(stamps, batch_size * k, warmup // k, window // k)


def _predict_warmup(x_test, batch_size):
    """A full batch and the short last one: a compiled network specialises on both shapes before timing starts."""
    return x_test[:batch_size + len(x_test) % batch_size]


def _timed_trainer(stamps: list[float], device, **settings):
    """A Trainer that appends a timestamp (synced with the device) to ``stamps`` after every training batch, with
    nothing else that costs time per step: no logger, checkpointing, progress bar or summary."""
    import lightning as L

    from lightning_cnn.speed import Speed

    class Stamp(L.Callback):
        def on_train_batch_end(self, *args):
            stamps.append(_stamp(device))

    return L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, callbacks=[Stamp(), *Speed().trainer_callbacks()], **settings)


def bench_plain_torch(spec, x, y, x_test, batch_size, precision, steps, warmup, window, steps_per_execution,
                      channels_last, device, compiled):
    """The loop a PyTorch user writes by hand: slices of in-memory tensors, the recipe's optimizer, no framework.
    ``steps_per_execution`` is not used: the loop has no per-call overhead to spread over several steps."""
    import torch
    import torch.nn.functional as F

    import lightning_cnn
    from lightning_cnn.optim import make_optimizer
    from lightning_cnn.speed import Speed
    from lightning_cnn.speed.cpu_tuning import retain_freed_memory

    # No Lightning in this process (importing it makes torch re-probe CUDA on every optimizer step, see
    # speed/cpu_tuning.py), but the allocator setting that Lightning CPU runs get from CPUTuning, so the ratio
    # measures the framework only.
    assert "lightning" not in sys.modules
    retain_freed_memory()
    torch.manual_seed(0)
    # The same network, made by the same speed seam, that KerasRecipeModule trains: the ratio measures the framework.
    speed = Speed() if channels_last is None else Speed(channels_last=channels_last)
    model = lightning_cnn.build_model(spec.id, seed=0)
    memory_format = speed.prepare_network(model)
    model = model.to(device)
    xt, yt, xt_test = _torch_tensors(x, y, x_test, device, memory_format == torch.channels_last)
    if compiled:
        model.compile()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec.recipe,
                               fused=speed.fused_optimizers)
    autocast = torch.autocast(device.type, dtype=getattr(torch, AUTOCAST_DTYPES.get(precision, "bfloat16")),
                              enabled=precision in AUTOCAST_DTYPES)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")  # float16 needs loss scaling
    stamps = [_stamp(device)]
    order = torch.randperm(len(xt), device=device)
    model.train()
    for start in range(0, steps * batch_size, batch_size):
        index = order[start:start + batch_size]
        with autocast:
            loss = F.cross_entropy(model(xt[index]).float(), yt[index])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        stamps.append(_stamp(device))
    model.eval()
    warm = _predict_warmup(xt_test, batch_size)
    with torch.inference_mode(), autocast:
        for i in range(0, len(warm), batch_size):
            model(warm[i:i + batch_size])
        start = _stamp(device)
        for i in range(0, len(xt_test), batch_size):
            torch.softmax(model(xt_test[i:i + batch_size]).float(), dim=1)
    return _windows(stamps, batch_size, warmup, window), len(xt_test) / (_stamp(device) - start)


def bench_lightning(spec, x, y, x_test, batch_size, precision, steps, warmup, window, steps_per_execution,
                    channels_last, device, compiled):
    """This project's training path: KerasRecipeModule + InMemoryLoader under a Lightning Trainer."""
    import lightning as L
    import torch

    from lightning_cnn.datamodule import InMemoryLoader
    from lightning_cnn.module import KerasRecipeModule
    from lightning_cnn.speed import Speed

    L.seed_everything(0, verbose=False)
    speed = Speed() if channels_last is None else Speed(channels_last=channels_last)  # NHWC only where there are convs
    module = KerasRecipeModule(spec.id, seed=0, compiled=compiled, steps_per_execution=steps_per_execution,
                               speed=speed)
    xt, yt, xt_test = _torch_tensors(x, y, x_test, device, module.memory_format == torch.channels_last)
    stamps: list[float] = []
    trainer = _timed_trainer(stamps, device, precision=precision, max_steps=steps)
    stamps.append(_stamp(device))
    trainer.fit(module, train_dataloaders=InMemoryLoader(xt, yt, batch_size, shuffle=True,
                                                         batches_per_item=steps_per_execution))
    test_loader = InMemoryLoader(xt_test, torch.zeros(len(xt_test), dtype=torch.long, device=device), batch_size,
                                 shuffle=False)
    warm = _predict_warmup(xt_test, batch_size)
    trainer.predict(module, dataloaders=InMemoryLoader(warm, yt[:len(warm)], batch_size, False))
    start = _stamp(device)
    trainer.predict(module, dataloaders=test_loader)
    return _grouped_windows(stamps, batch_size, warmup, window, steps_per_execution), \
        len(xt_test) / (_stamp(device) - start)


def loop_floor_ms(contender: str, steps: int, batch_size: int = 32) -> float:
    """Median milliseconds a step of a loop whose step does no work (one parameter, a batch sliced as usual): what
    the training loop itself costs per step, which no model or module code can take away."""
    import torch

    from lightning_cnn.speed.cpu_tuning import retain_freed_memory

    x = torch.rand(steps * batch_size, 1, 28, 28)
    y = torch.zeros(len(x), dtype=torch.long)
    stamps = [time.perf_counter()]
    if contender == "plain_torch":
        retain_freed_memory()
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=0.0)
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            loss = (weight * x[index][0, 0, 0, 0]).sum() + 0 * y[index][0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
    else:
        import lightning as L

        from lightning_cnn.datamodule import InMemoryLoader

        class NoWork(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, batch_idx):
                xb, yb = batch
                return (self.weight * xb[0, 0, 0, 0]).sum() + 0 * yb[0]

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        trainer = _timed_trainer(stamps, torch.device("cpu"))
        trainer.fit(NoWork(), train_dataloaders=InMemoryLoader(x, y, batch_size, shuffle=True))
    skip = len(stamps) // 10  # warm-up
    return 1e3 * statistics.median(b - a for a, b in zip(stamps[skip:], stamps[skip + 1:]))


def floor_report(steps: int) -> str:
    floors = {}
    for contender in ("plain_torch", "lightning"):
        done = subprocess.run([sys.executable, __file__, "--floor-worker", contender, "--floor-steps", str(steps)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: the {contender} floor failed:\n{done.stderr[-2000:]}")
        floors[contender] = float(done.stdout.split()[-1])
    return (f"Per-step cost of the loop itself (a step that does no work, batch 32, CPU, median of {steps:,} steps): "
            f"plain PyTorch {floors['plain_torch']:.3f} ms, Lightning {floors['lightning']:.3f} ms; Lightning adds "
            f"{floors['lightning'] - floors['plain_torch']:.3f} ms to every step.")


def worker(args) -> dict:
    """One contender in this process; prints one JSON record."""
    import lightning_cnn  # noqa: F401  (before TensorFlow: see lightning_cnn/coexist.py)
    from lightning_cnn.specs import get_spec

    spec = get_spec(args.model)
    args.window = args.window or max(8, 3200 // args.batch_size)  # ~3,200 images a window at any batch size
    whole_groups = lambda n: -(-n // args.steps_per_execution) * args.steps_per_execution  # noqa: E731
    args.window, args.warmup = whole_groups(args.window), whole_groups(args.warmup)
    steps = args.warmup + args.windows * args.window
    x, y, x_test = _train_arrays(spec, args.data_dir, steps * args.batch_size)
    common = (spec, x, y, x_test, args.batch_size, args.precision, steps, args.warmup, args.window,
              args.steps_per_execution)
    if args.contender == "keras":
        train_rate, predict_rate = bench_keras(*common)
    else:
        import torch

        bench = bench_plain_torch if args.contender == "plain_torch" else bench_lightning
        device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
        train_rate, predict_rate = bench(*common, MEMORY_FORMATS[args.memory_format], device, args.compile)
    flops = _train_flops_per_image(spec)
    return {"model": spec.id, "batch_size": args.batch_size, "precision": args.precision,
            "contender": args.contender, "accelerator": args.accelerator, "compiled": args.compile and
            args.contender != "keras", "steps_per_execution": 1 if args.contender == "plain_torch" else
            args.steps_per_execution, "images_per_s": round(train_rate, 1),
            "predict_images_per_s": round(predict_rate, 1),
            "peak_mem_mb": round(_peak_mem_mb(args.contender, args.accelerator), 1),
            "gflops_per_s": round(train_rate * flops / 1e9, 2)}


def _peak_mem_mb(contender: str, accelerator: str) -> float:
    """Peak memory where training ran: the process's resident set on CPU, the framework's device peak on a GPU."""
    if accelerator == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if contender == "keras":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def _train_flops_per_image(spec) -> float:
    """Training FLOPs per image: the forward pass counted by torch's FlopCounterMode, times 3 (fwd + 2x bwd)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import lightning_cnn

    model = lightning_cnn.build_model(spec.id)
    h, w, c = spec.input_shape
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w))
    return 3.0 * counter.get_total_flops()


def matmul_peak_gflops(dtype_name: str = "float32", device: str = "cpu", repeats: int = 20) -> float:
    """The device's measured matmul rate (torch.mm; all CPU threads): the ceiling the GFLOP/s column is read against."""
    import torch

    device = torch.device(device)
    n = 1024 if device.type == "cpu" else 8192
    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        torch.mm(a, b)
    start = _stamp(device)
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n ** 3 * repeats / (_stamp(device) - start) / 1e9


def machine(accelerator: str = "cpu") -> str:
    from lightning_cnn.analysis import machine_description

    gpu = ""
    if accelerator == "gpu":
        import torch

        gpu = f"{torch.cuda.get_device_name()} (torch {torch.__version__}), "
    return f"{gpu}{machine_description()}, Python {platform.python_version()}"


def paired_ratio(record: dict, other: dict, field: str = "images_per_s") -> float:
    """Median over rounds of one round's ratio: contenders of a round run back to back, under the same VM load,
    so a round's ratio is not thrown off by the machine speeding up or slowing down between rounds."""
    return statistics.median(a / b for a, b in zip(record[f"{field}_runs"], other[f"{field}_runs"]))


def render(records: list[dict], command: str, peaks: dict, accelerator: str = "cpu") -> str:
    by_key = {(r["model"], r["batch_size"], r["precision"], r["contender"]): r for r in records}
    lines = [
        "# Training throughput: Keras vs plain PyTorch vs Lightning", "",
        f"Command: `{command}`  ", f"Machine: {machine(accelerator)}  ",
        "Measured matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()), "",
        "| model | batch | precision | contender | train images/s | GFLOP/s | % of peak | predict images/s | peak MB |"
        " Lightning/Keras | Lightning/plain | predict L/K |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        key = (r["model"], r["batch_size"], r["precision"])
        ratio = lambda other, field="images_per_s": (  # noqa: E731
            f"{paired_ratio(r, by_key[key + (other,)], field):.2f}×" if r["contender"] == "lightning"
            and key + (other,) in by_key else "")
        peak = peaks[AUTOCAST_DTYPES.get(r["precision"], "float32")]
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['precision']} | {r['contender']}"
            f"{' (compiled)' if r.get('compiled') else ''}"
            f"{f' ({k} steps/execution)' if (k := r.get('steps_per_execution', 1)) > 1 else ''} | {r['images_per_s']:,.0f} "
            f"| {r['gflops_per_s']:.1f} | {100 * r['gflops_per_s'] / peak:.1f}% | {r['predict_images_per_s']:,.0f} "
            f"| {r['peak_mem_mb']:,.0f} | {ratio('keras')} | {ratio('plain_torch')} "
            f"| {ratio('keras', 'predict_images_per_s')} |")
    return "\n".join(lines) + "\n"


def _run_worker(args, model, batch_size, precision, contender) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--batch-size", str(batch_size),
           "--precision", precision, "--contender", contender, "--warmup", str(args.warmup),
           "--windows", str(args.windows)]
    cmd += ["--window", str(args.window)] if args.window else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--memory-format", args.memory_format, "--accelerator", args.accelerator]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--steps-per-execution", str(args.steps_per_execution)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode or line is None:
        print(f"error: {contender} on {model} (batch {batch_size}) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[6:])


def _median_run(runs: list[dict]) -> dict:
    """The run with the median training throughput, plus every run's figures so the spread stays visible."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    record = dict(ordered[(len(ordered) - 1) // 2])
    record["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    record["predict_images_per_s_runs"] = [r["predict_images_per_s"] for r in runs]
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist_cnn_small", "mnist_cnn_tf_tutorial"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    p.add_argument("--precision", nargs="+", default=["32-true"], choices=["32-true", *AUTOCAST_DTYPES])
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="gpu: one CUDA device")
    p.add_argument("--data-dir")
    p.add_argument("--warmup", type=int, default=30, help="steps before timing")
    p.add_argument("--windows", type=int, default=7, help="timed windows; the median is reported")
    p.add_argument("--window", type=int, help="steps per timed window (default: 3,200 images' worth)")
    p.add_argument("--repeats", type=int, default=3, help="round-robin runs of every contender; median reported")
    p.add_argument("--memory-format", default="auto", choices=list(MEMORY_FORMATS),
                   help="torch contenders' layout for CNNs (Speed(channels_last=...)): auto and channels_last "
                        "are NHWC, contiguous NCHW; MLPs stay NCHW")
    p.add_argument("--compile", action="store_true", help="torch.compile the network in both torch contenders")
    p.add_argument("--steps-per-execution", type=int, default=1, metavar="K",
                   help="Keras compile(steps_per_execution=K) and Lightning's K batches per step")
    p.add_argument("--floor", action="store_true", help="only measure each loop's own per-step cost (no model)")
    p.add_argument("--floor-steps", type=int, default=2000, help=argparse.SUPPRESS)
    p.add_argument("--floor-worker", choices=["plain_torch", "lightning"], help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny run that only proves the script works (CI)")
    p.add_argument("--out", default=str(REPO / "reports" / "bench.md"))
    p.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor_worker:
        print(f"{loop_floor_ms(args.floor_worker, args.floor_steps):.4f}")
        return 0
    if args.floor:
        print(floor_report(args.floor_steps))
        return 0
    if args.worker:
        args.precision = args.precision[0]
        print("BENCH " + json.dumps(worker(args)), flush=True)
        return 0
    if args.steps_per_execution < 1:
        p.error(f"--steps-per-execution {args.steps_per_execution}: use 1 or more steps per call")
    if args.accelerator == "cpu" and "16-mixed" in args.precision:
        p.error("--precision 16-mixed is float16 autocast with loss scaling, a CUDA recipe: use --accelerator gpu, "
                "or bf16-mixed on CPU")
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            p.error("--accelerator gpu: PyTorch sees no CUDA GPU here; use --accelerator cpu")
    if "keras" in args.contenders and importlib.util.find_spec("tensorflow") is None:
        p.error("the keras contender needs TensorFlow (pip install -e '.[keras]'); without it pass "
                "--contenders plain_torch lightning")
    if args.smoke:
        args.models, args.batch_sizes = args.models[:1], args.batch_sizes[:1]
        args.warmup, args.windows, args.window, args.repeats = 2, 2, 3, 1
        args.out = args.out if "--out" in (argv or sys.argv) else None

    records = []
    for model in args.models:
        for batch_size in args.batch_sizes:
            for precision in args.precision:
                runs = {contender: [] for contender in args.contenders}
                for _ in range(args.repeats):
                    for contender in args.contenders:
                        record = _run_worker(args, model, batch_size, precision, contender)
                        if record is None:
                            return 1
                        runs[contender].append(record)
                        print(f"{model:24} b={batch_size:<4} {precision:10} {contender:12} "
                              f"{record['images_per_s']:9,.0f} img/s  predict {record['predict_images_per_s']:9,.0f}"
                              f" img/s  {record['peak_mem_mb']:7,.0f} MB", flush=True)
                records += [_median_run(contender_runs) for contender_runs in runs.values()]
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    peaks = {dtype: matmul_peak_gflops(dtype, device)
             for dtype in dict.fromkeys(["float32", *(AUTOCAST_DTYPES.get(p, "float32") for p in args.precision)])}
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = render(records, command, peaks, args.accelerator)
    print("\n" + table)
    from lightning_cnn.atomic import write_text

    if args.out:
        write_text(args.out, table)
    if args.json:
        write_text(args.json, json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
