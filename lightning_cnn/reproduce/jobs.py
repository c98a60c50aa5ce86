"""The reproduction runner: one job per (model, framework, seed), each trained in its own process.

A job is a plain dict (``make_job``) holding everything that changes its result. ``run_job`` trains it with
``python -m lightning_cnn.reproduce.worker`` (TensorFlow and torch never share a process or a thread pool), or
reuses a finished run with the same settings; ``run_jobs`` runs many, a few at a time, longest first. Each
finished run is OUTDIR/<model>__<framework>__seed<S>.json (+ .probs.npy, the test-set probabilities, + .log).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

FRAMEWORKS = ("keras", "lightning")
RUN_FORMAT = 1  # bump when the run JSON layout changes: --resume then retrains


def make_job(model: str, framework: str, seed: int, *, epochs: int | None = None,
             limit_train_batches: int | None = None, data_dir: str | None = None,
             allow_partial_test: bool = False, accelerator: str = "auto") -> dict:
    """One training run. ``epochs`` None = the recipe's; ``limit_train_batches`` (smoke tests only) caps the
    training batches per epoch on both sides. Everything that changes the result is in the job."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; use {' or '.join(FRAMEWORKS)}")
    return {"format": RUN_FORMAT, "model": model, "framework": framework, "seed": int(seed), "epochs": epochs,
            "limit_train_batches": limit_train_batches, "data_dir": str(data_dir) if data_dir else None,
            "allow_partial_test": bool(allow_partial_test),
            "accelerator": accelerator if framework == "lightning" else None}


def run_name(job: dict) -> str:
    return f"{job['model']}__{job['framework']}__seed{job['seed']}"


def is_full_recipe(job: dict) -> bool:
    from lightning_cnn.specs import get_spec

    return job["limit_train_batches"] is None and job["epochs"] in (None, get_spec(job["model"]).recipe.epochs)


def job_cost(job: dict) -> float:
    """Rough relative cost, to start the longest runs first (the last ones to finish are then short)."""
    from lightning_cnn.specs import get_spec

    spec = get_spec(job["model"])
    epochs = job["epochs"] or spec.recipe.epochs
    if spec.recipe.early_stopping_patience:
        epochs = min(epochs, 30)  # where document 004 stopped
    steps = 60_000 * (1 - spec.recipe.validation_split) / spec.recipe.batch_size
    if job["limit_train_batches"]:
        steps = min(steps, job["limit_train_batches"])
    per_step = {"conv2d": 10.0}.get(spec.layers[0][0], 1.0) * spec.recipe.batch_size / 32
    return epochs * steps * per_step * (2.0 if job["framework"] == "lightning" else 1.0)


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        env[key] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def same_job(a: dict | None, b: dict) -> bool:
    """Whether a finished run answers ``b``: the same job, wherever its (checksum-verified) data was read from."""
    ignore = ("data_dir",)
    return a is not None and {k: v for k, v in a.items() if k not in ignore} == \
        {k: v for k, v in b.items() if k not in ignore}


def run_job(job: dict, runs_dir, *, threads: int = 1, resume: bool = False, timeout: float | None = None) -> dict:
    """Train ``job`` in a fresh subprocess (or, with ``resume``, reuse its finished run JSON when the job is the
    same) and return the run JSON. A failed run returns ``{"error": ..., "log": ...}`` and writes nothing else."""
    runs_dir = Path(runs_dir).absolute()
    runs_dir.mkdir(parents=True, exist_ok=True)
    name = run_name(job)
    result_path, log_path = runs_dir / f"{name}.json", runs_dir / f"{name}.log"
    if resume and result_path.is_file():
        try:
            previous = json.loads(result_path.read_text())
            if same_job(previous.get("job"), job) and (runs_dir / previous["predictions"]).is_file():
                previous["reused"] = True
                return previous
        except (OSError, ValueError, KeyError):
            pass
    for stale in (result_path, runs_dir / f"{name}.probs.npy"):  # a failed fresh run must not leave an old result
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "lightning_cnn.reproduce.worker", json.dumps(job), str(result_path),
               str(threads)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_thread_env(threads),
                                  timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code == 0 and result_path.is_file():
        result = json.loads(result_path.read_text())
        if result.get("job") == job:
            return result
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    return {"job": job, "error": f"worker exited with {code} after {time.perf_counter() - started:.0f} s",
            "log": str(log_path), "log_tail": tail}


def run_jobs(jobs: list[dict], runs_dir, *, parallel: int = 1, threads: int = 1, resume: bool = False,
             on_done=None, timeout: float | None = None) -> dict[str, dict]:
    """Run every job, ``parallel`` at a time, longest first; returns {run_name: run JSON}. ``on_done(result)`` is
    called (from one thread at a time) as each finishes."""
    lock = threading.Lock()
    results = {}

    def one(job):
        result = run_job(job, runs_dir, threads=threads, resume=resume, timeout=timeout)
        with lock:
            results[run_name(job)] = result
            if on_done:
                on_done(result)
        return result

    ordered = sorted(jobs, key=job_cost, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for future in [pool.submit(one, job) for job in ordered]:
            future.result()
    return results
