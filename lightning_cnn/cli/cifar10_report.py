"""Document 003 on CIFAR-10, both sides: the 300-image CNN recipe, the same CNN on all 50,000 training images, and
seconds per epoch of every CIFAR model. Writes reports/cifar10.md (+ cifar10.json).

    lightning-cnn-cifar10-report --allow-partial-test
    lightning-cnn-cifar10-report --runs recipe --frameworks lightning        # a part of it
    lightning-cnn-cifar10-report --report-only                               # re-render from reports/cifar10/

(``python scripts/cifar10_report.py ...`` is the same command.)
Each run is ``scripts/train.py`` (Lightning) or ``scripts/train_keras.py`` (Keras) in its own process, one at a
time, with ``--metrics-json``; a finished run's JSON is reused unless ``--retrain``. VGG16 transfer is timed, not
trained to its band, on this CPU: ``--vgg16-images`` training images for one epoch, scaled to 50,000 (the table
says so). Its documented accuracy needs the ImageNet weights and, by that estimate, about 4 minutes an epoch here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from ..analysis import machine_description
from ..atomic import write_text
from ..errors import exit_on_user_error

FULL_TRAIN = 50_000
# run name -> (model id, extra arguments for both train scripts, what the row means)
RUNS = {
    "recipe": ("cifar10_cnn", [], "document 003's recipe: first 300 training images, 10 epochs"),
    "full": ("cifar10_cnn", ["--train-images", "all"], "same CNN and recipe on all 50,000 training images"),
    "vgg16": ("cifar10_vgg16_transfer", ["--epochs", "1", "--weights", "none"], "VGG16 transfer: timing only"),
}
SCRIPTS = {"keras": "train_keras.py", "lightning": "train.py"}  # scripts/<name>: the commands the report shows
MODULES = {"keras": "lightning_cnn.cli.train_keras", "lightning": "lightning_cnn.cli.train"}  # what runs them


def command(run: str, framework: str, args) -> list[str]:
    """The run's command line: ``scripts/<name>.py`` and its arguments."""
    model, extra, _ = RUNS[run]
    if run == "vgg16":
        extra = [*extra, "--train-images", str(args.vgg16_images)]
        if framework == "keras":  # keras_ref builds VGG16 with weights=None unless given an .h5
            extra = [a for a in extra if a not in ("--weights", "none")]
    cmd = ["scripts/" + SCRIPTS[framework], "--model", model, *extra,
           "--seed", str(args.seed), "--metrics-json", str(result_path(args.out, run, framework))]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--allow-partial-test"] if args.allow_partial_test else []
    if framework == "lightning":
        cmd += ["--out", str(Path(args.out) / "cifar10" / f"{run}__lightning"), "--accelerator", args.accelerator]
    return cmd


def result_path(out, run: str, framework: str) -> Path:
    return Path(out) / "cifar10" / f"{run}__{framework}.json"


def seconds_per_epoch(result: dict) -> float:
    seconds = result["seconds_per_epoch"]
    seconds = seconds if isinstance(seconds, list) else result.get("epoch_seconds", [seconds])
    # The first epoch also builds graphs and warms caches; steady state is the rest when there is a rest.
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady)


def render(results: dict, args, commands: list[str]) -> str:
    lines = ["# CIFAR-10 (document 003), Keras and Lightning", "",
             f"Machine: {machine_description()}, "
             f"Python {platform.python_version()}. Commands, one process each:", "", "```"]
    lines += commands + ["```", "",
                         "| run | model | training images | epochs | Keras test acc | Lightning test acc "
                         "| Keras s/epoch | Lightning s/epoch | Lightning/Keras speed |",
                         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run, (model, _, meaning) in RUNS.items():
        pair = {fw: results.get((run, fw)) for fw in SCRIPTS}
        if not any(pair.values()):
            continue
        done = next(r for r in pair.values() if r)
        images = (args.vgg16_images if run == "vgg16" else FULL_TRAIN if run == "full" else 300)
        scale = FULL_TRAIN / images if run == "vgg16" else 1.0
        acc = {fw: (f"{100 * r['test_accuracy']:.2f}%" if r and run != "vgg16" else "—") for fw, r in pair.items()}
        sec = {fw: (seconds_per_epoch(r) * scale if r else None) for fw, r in pair.items()}
        shown = {fw: (f"{s:,.1f}" + (" (est.)" if run == "vgg16" else "") if s else "—") for fw, s in sec.items()}
        speed = f"{sec['keras'] / sec['lightning']:.2f}×" if sec["keras"] and sec["lightning"] else "—"
        lines.append(f"| {run}: {meaning} | `{model}` | {images:,} | {done['epochs_run']} | {acc['keras']} "
                     f"| {acc['lightning']} | {shown['keras']} | {shown['lightning']} | {speed} |")
    partial = any(r.get("test_is_partial") for r in results.values())
    lines += ["", "Test accuracy is on " + ("the first 1,000 CIFAR-10 test images (all the shared data has)."
                                            if partial else "the 10,000 CIFAR-10 test images."),
              "Seconds per epoch leave out the first epoch (graph building, warm-up) when there are more.",
              f"VGG16 rows time one epoch on {args.vgg16_images:,} images and scale it to 50,000 (\"est.\"); "
              "they train from random weights because the timing does not depend on them.", ""]
    return "\n".join(lines)


def _main(argv) -> int:
    p = argparse.ArgumentParser(prog="lightning-cnn-cifar10-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--frameworks", default="keras,lightning")
    p.add_argument("--data-dir")
    p.add_argument("--allow-partial-test", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vgg16-images", type=int, default=640, help="training images timed for VGG16 (default 640)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--out", default="reports")
    p.add_argument("--retrain", action="store_true", help="train again even where a run's JSON exists")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = set(frameworks) - set(SCRIPTS)
    if unknown:
        p.error(f"unknown framework(s) {', '.join(sorted(unknown))}; use keras and/or lightning")

    commands = []
    for run in args.runs:
        for framework in frameworks:
            cmd = command(run, framework, args)
            shown = shlex.join(["python", *cmd])
            commands.append(shown)
            if args.report_only or (result_path(args.out, run, framework).is_file() and not args.retrain):
                continue
            print(f"$ {shown}", flush=True)
            done = subprocess.run([sys.executable, "-m", MODULES[framework], *cmd[1:]],
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            if done.returncode:
                print(f"error: {run} on {framework} failed (exit {done.returncode})", file=sys.stderr)
                return 1
    results = {(run, fw): json.loads(result_path(args.out, run, fw).read_text())
               for run in RUNS for fw in SCRIPTS if result_path(args.out, run, fw).is_file()}
    table = render(results, args, commands)
    write_text(Path(args.out) / "cifar10.md", table)
    write_text(Path(args.out) / "cifar10.json", json.dumps(
        [{"run": run, "framework": fw, **{k: v for k, v in r.items() if k != "history"}}
         for (run, fw), r in results.items()], indent=2) + "\n")
    print(table)
    return 0


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
