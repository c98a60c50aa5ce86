"""Training and inference throughput: Keras 3 (model.fit) vs a plain PyTorch loop vs this project's Lightning.

    lightning-cnn-bench --data-dir ../shared/data                       # the issue's table, float32
    lightning-cnn-bench --models mnist_cnn_small --batch-sizes 32 --precision bf16-mixed
    lightning-cnn-bench --smoke                                         # seconds-long CI check
    lightning-cnn-bench --compile --contenders plain_torch lightning    # both torch loops under torch.compile
    lightning-cnn-bench --floor                                         # each loop's own cost per step
    lightning-cnn-bench --steps-per-execution 8   # Keras and Lightning both take 8 optimizer steps per call
    lightning-cnn-bench --accelerator gpu --batch-sizes 32 512 --precision 32-true 16-mixed bf16-mixed \
        --contenders plain_torch lightning                                  # a CUDA machine without TensorFlow
    lightning-cnn-bench --acceptance     # converted keras.applications twins vs Keras (keras_ref/bench_twins.py)

(``python scripts/bench.py ...`` is the same command.)
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
import subprocess
import sys

from .. import benchmark
from ..atomic import write_text
from ..benchmark import AUTOCAST_DTYPES, CONTENDERS, MEMORY_FORMATS, paired_ratio
from ..errors import UserError, exit_on_user_error


def floor_report(steps: int) -> str:
    floors = {}
    for contender in ("plain_torch", "lightning"):
        done = subprocess.run([sys.executable, "-m", "lightning_cnn.cli.bench", "--floor-worker", contender,
                               "--floor-steps", str(steps)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: the {contender} floor failed:\n{done.stderr[-2000:]}")
        floors[contender] = float(done.stdout.split()[-1])
    return (f"Per-step cost of the loop itself (a step that does no work, batch 32, CPU, median of {steps:,} steps): "
            f"plain PyTorch {floors['plain_torch']:.3f} ms, Lightning {floors['lightning']:.3f} ms; Lightning adds "
            f"{floors['lightning'] - floors['plain_torch']:.3f} ms to every step.")


def machine(accelerator: str = "cpu") -> str:
    from lightning_cnn.analysis import machine_description

    gpu = ""
    if accelerator == "gpu":
        import torch

        gpu = f"{torch.cuda.get_device_name()} (torch {torch.__version__}), "
    return f"{gpu}{machine_description()}, Python {platform.python_version()}"


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
    cmd = [sys.executable, "-m", "lightning_cnn.cli.bench", "--worker", "--model", model,
           "--batch-size", str(batch_size), "--precision", precision, "--contender", contender, "--warmup", str(args.warmup),
           "--windows", str(args.windows)]
    cmd += ["--window", str(args.window)] if args.window else []
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--memory-format", args.memory_format, "--accelerator", args.accelerator]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--steps-per-execution", str(args.steps_per_execution)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode == 2:  # the worker's one-line user error (missing data, bad flag): every worker would hit it
        raise UserError(f"{contender} on {model} (batch {batch_size}): {_user_error_line(done.stderr)}")
    if done.returncode or line is None:
        print(f"error: {contender} on {model} (batch {batch_size}) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[6:])


def _user_error_line(stderr: str) -> str:
    lines = [ln.removeprefix("error: ") for ln in stderr.splitlines() if ln.startswith("error: ")]
    return lines[-1] if lines else stderr.strip()[-500:]


def _median_run(runs: list[dict]) -> dict:
    """The run with the median training throughput, plus every run's figures so the spread stays visible."""
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    record = dict(ordered[(len(ordered) - 1) // 2])
    record["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    record["predict_images_per_s_runs"] = [r["predict_images_per_s"] for r in runs]
    return record


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--acceptance" in argv:  # the twin benchmark has its own options: lightning-cnn-bench --acceptance --help
        if importlib.util.find_spec("tensorflow") is None:
            raise UserError("--acceptance compares converted twins with Keras and needs TensorFlow: "
                            "pip install -e '.[keras]'")
        from keras_ref.bench_twins import main as bench_twins

        return bench_twins([a for a in argv if a != "--acceptance"])
    p = argparse.ArgumentParser(prog="lightning-cnn-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--acceptance", action="store_true", help="converted Keras twins vs Keras on the acceptance "
                   "models (see lightning-cnn-bench --acceptance --help)")
    p.add_argument("--smoke", action="store_true", help="tiny run that only proves the script works (CI)")
    p.add_argument("--out", default="reports/bench.md")
    p.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor_worker:
        print(f"{benchmark.loop_floor_ms(args.floor_worker, args.floor_steps):.4f}")
        return 0
    if args.floor:
        print(floor_report(args.floor_steps))
        return 0
    if args.worker:
        args.precision = args.precision[0]
        print("BENCH " + json.dumps(benchmark.measure(args)), flush=True)
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
    peaks = {dtype: benchmark.matmul_peak_gflops(dtype, device)
             for dtype in dict.fromkeys(["float32", *(AUTOCAST_DTYPES.get(p, "float32") for p in args.precision)])}
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = render(records, command, peaks, args.accelerator)
    print("\n" + table)
    if args.out:
        write_text(args.out, table)
    if args.json:
        write_text(args.json, json.dumps(records, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":  # the workers run as python -m lightning_cnn.cli.bench --worker ...
    sys.exit(main())

