"""Reproduce the documented MNIST results on both sides (Keras reference and Lightning port) and write reports/.

    lightning-cnn-reproduce                                      # every MNIST id, seed 0, both sides
    lightning-cnn-reproduce --seeds 3 --resume                   # seeds 0,1,2; reuse finished runs
    lightning-cnn-reproduce --models mnist_cnn_small mnist_mlp_t9_4 --frameworks lightning
    lightning-cnn-reproduce --quick --out /tmp/smoke             # 1 epoch, 20 batches: a smoke test
    lightning-cnn-reproduce --report-only                        # rebuild the report from reports/runs

(``python scripts/reproduce.py ...`` is the same command; the runner is ``lightning_cnn.reproduce``.)

Every run (model x framework x seed) trains in its own subprocess, the recipe exactly as documented, from the
project's one data layer; --jobs runs that many at once with --threads CPU threads each (default: one process
per core, one thread each, so TensorFlow and torch never compete for a core). Each finished run is written at
once to OUT/runs/<model>__<framework>__seed<S>.json (+ .probs.npy: test-set softmax probabilities, + .log), so
a run that stops part-way keeps what finished, and --resume reuses finished runs whose settings match.

The report: OUT/results.md and OUT/results.json (every number), and per model OUT/<id>/ with the learning curves
of both frameworks, the confusion matrices and a grid of misclassified test images (seed 0 of each side).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

from ..errors import exit_on_user_error
from ..reproduce.jobs import FRAMEWORKS, make_job, run_jobs, run_name, same_job
from ..reproduce.report import build_report

QUICK_TRAIN_BATCHES = 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="lightning-cnn-reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="ID",
                   help="model ids (space or comma separated; default: every MNIST id in the spec table)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 on each side (default 1)")
    p.add_argument("--frameworks", default="keras,lightning", help="comma separated: keras, lightning")
    p.add_argument("--data-dir", help="data folder (else $LIGHTNING_CNN_DATA, caches, download)")
    p.add_argument("--out", default="reports", help="report folder (default reports/)")
    p.add_argument("--epochs-scale", type=float, help="multiply every recipe's epochs (≥1 epoch): smoke runs only")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: 1 epoch of at most {QUICK_TRAIN_BATCHES} training batches per run")
    p.add_argument("--allow-partial-test", action="store_true",
                   help="accept a test set shorter than the official one (CIFAR-10's first 1,000 test images)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per core, at most 2)")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: cores / jobs)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu, gpu)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in OUT/runs with the same settings")
    p.add_argument("--report-only", action="store_true", help="train nothing: rebuild the report from OUT/runs")
    p.add_argument("--timeout", type=float, help="seconds after which one run is abandoned (default: none)")
    return p.parse_args(argv)


def _main(argv) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from ..specs import get_spec, list_models

    models = [m for item in (args.models or []) for m in item.split(",") if m] or \
        [m for m in list_models() if get_spec(m).dataset == "mnist"]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    specs = [get_spec(m) for m in models]
    bad = [f for f in frameworks if f not in FRAMEWORKS]
    if bad or not frameworks:
        print(f"reproduce.py: error: --frameworks takes keras and/or lightning, not {args.frameworks!r}",
              file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("reproduce.py: error: --seeds must be at least 1", file=sys.stderr)
        return 2
    if any(s.id == "cifar10_vgg16_transfer" for s in specs):
        print("reproduce.py: error: cifar10_vgg16_transfer needs ImageNet weights and hours on a CPU; train it with "
              "scripts/train.py / train_keras.py --weights", file=sys.stderr)
        return 2
    from ..data import load_dataset

    for dataset in sorted({s.dataset for s in specs}):  # find and validate the data once, before any worker starts
        load_dataset(dataset, args.data_dir, allow_partial_test=args.allow_partial_test)
    cores = os.cpu_count() or 1
    parallel = args.jobs or max(1, min(2, cores))
    threads = args.threads or max(1, cores // parallel)
    seeds = list(range(args.seeds))
    limit = QUICK_TRAIN_BATCHES if args.quick else None

    def epochs_for(spec):
        if args.quick:
            return 1
        if args.epochs_scale:
            return max(1, round(spec.recipe.epochs * args.epochs_scale))
        return None

    jobs = [make_job(s.id, fw, seed, epochs=epochs_for(s), limit_train_batches=limit, data_dir=args.data_dir,
                     allow_partial_test=args.allow_partial_test, accelerator=args.accelerator)
            for s in specs for fw in frameworks for seed in seeds]
    out = Path(args.out)
    runs_dir = out / "runs"
    command = shlex.join(["python", "scripts/reproduce.py", *(sys.argv[1:] if argv is None else argv)])
    counts = {"trained": 0, "reused": 0}

    if args.report_only:
        results = {}
        for job in jobs:
            path = runs_dir / f"{run_name(job)}.json"
            previous = json.loads(path.read_text()) if path.is_file() else None
            if previous is not None and same_job(previous.get("job"), job):
                results[run_name(job)] = previous
                counts["reused"] += 1
            elif previous is not None:
                print(f"skipping {path}: it was run with other settings ({previous.get('job')})", file=sys.stderr)
        if not results:
            print(f"reproduce.py: error: no finished runs in {runs_dir} for these models, seeds and settings",
                  file=sys.stderr)
            return 2
    else:
        print(f"{len(jobs)} run(s): {len(models)} model(s) x {len(frameworks)} framework(s) x {len(seeds)} seed(s); "
              f"{parallel} at a time, {threads} thread(s) each; logs in {runs_dir}/", flush=True)

        def done(result):
            name = run_name(result["job"])
            if "error" in result:
                print(f"  FAILED {name}: {result['error']} (log {result['log']})", flush=True)
                return
            counts["reused" if result.get("reused") else "trained"] += 1
            print(f"  {name}: test acc {100 * result['test_accuracy']:.2f}%, {result['epochs_run']} epochs, "
                  f"{result.get('median_epoch_seconds') or 0:.1f} s/epoch"
                  + (" (reused)" if result.get("reused") else ""), flush=True)

        results = run_jobs(jobs, runs_dir, parallel=parallel, threads=threads, resume=args.resume, on_done=done,
                           timeout=args.timeout)
    full = not args.quick and not args.epochs_scale
    meta = {"command": command, "seeds": seeds, "frameworks": frameworks, "parallel": parallel, "threads": threads,
            "full_recipe": full and all(r.get("full_recipe", False) for r in results.values() if "error" not in r),
            "budget": "--quick" if args.quick else f"--epochs-scale {args.epochs_scale}" if args.epochs_scale else "",
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "wall_seconds": time.perf_counter() - started, "runs_trained": counts["trained"],
            "runs_reused": counts["reused"]}
    if args.report_only:  # the header still names the session that trained the runs, and says who re-rendered
        trained = _training_session(out / "results.json")
        meta.update({**trained, "rendered_by": command} if trained else {})
    build_report(out, models, frameworks, seeds, results, meta, args.data_dir, args.allow_partial_test)
    failed = [n for n, r in results.items() if "error" in r]
    print(f"report: {out / 'results.md'} ({len(results) - len(failed)} run(s) finished, {len(failed)} failed)")
    return 1 if failed else 0


def _training_session(results_json: Path) -> dict:
    """The command, finish time and run counts of the session that trained the runs an earlier report shows."""
    try:
        previous = json.loads(results_json.read_text())
    except (OSError, ValueError):
        return {}
    keys = ("command", "finished", "wall_seconds", "runs_trained", "runs_reused")
    return {k: previous[k] for k in keys if k in previous} if previous.get("runs_trained") else {}


def main(argv=None) -> int:
    return exit_on_user_error(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
