"""bench.py's seconds-long smoke mode: proves the script runs all three contenders and writes its records.

Speed itself is never asserted here (timed tests are flaky); scripts/bench.py prints the ratios.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "scripts/bench.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_bench_smoke_bf16_torch_contenders_only(data_dir, tmp_path):
    out = tmp_path / "records.json"
    done = bench("--smoke", "--data-dir", data_dir, "--precision", "bf16-mixed", "--contenders", "plain_torch",
                 "lightning", "--json", out)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["contender"], r["precision"], r["accelerator"]) for r in records] == [
        ("plain_torch", "bf16-mixed", "cpu"), ("lightning", "bf16-mixed", "cpu")]


@pytest.mark.long  # torch.compile in both workers: about 1.5 minutes of compiling on 2 cores
def test_bench_smoke_compiled_torch_contenders(data_dir, tmp_path):
    out, table = tmp_path / "records.json", tmp_path / "bench.md"
    done = bench("--smoke", "--compile", "--data-dir", data_dir, "--contenders", "plain_torch", "lightning",
                 "--json", out, "--out", table)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["contender"], r["compiled"]) for r in records] == [("plain_torch", True), ("lightning", True)]
    assert "lightning (compiled)" in table.read_text()


@pytest.mark.keras
def test_bench_smoke_writes_one_record_per_contender_with_steps_per_execution(data_dir, tmp_path):
    """One run of all three contenders (a smoke run costs ~35 s of worker start-ups): the records, the table, and
    K=2 steps per execution reaching Keras and Lightning but not the plain loop."""
    out, table = tmp_path / "records.json", tmp_path / "bench.md"
    done = bench("--smoke", "--steps-per-execution", 2, "--data-dir", data_dir, "--json", out, "--out", table)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["contender"], r["steps_per_execution"]) for r in records] == [
        ("keras", 2), ("plain_torch", 1), ("lightning", 2)]
    for record in records:
        assert {"model", "batch_size", "precision", "contender", "images_per_s", "peak_mem_mb"} <= record.keys()
        assert record["images_per_s"] > 0 and record["peak_mem_mb"] > 0
    text = table.read_text()
    assert "Lightning/Keras" in text and "mnist_cnn_small" in text
    assert "keras (2 steps/execution)" in text and "lightning (2 steps/execution)" in text
    assert bench("--smoke", "--steps-per-execution", 0).returncode == 2


def test_grouped_windows_count_images_per_group_of_steps():
    """Stamps once per 4 steps of batch 8, one group of warm-up, windows of 8 steps: 64 images per window."""
    from lightning_cnn.benchmark import grouped_windows

    stamps = [0.0, 1.0, 2.0, 4.0, 5.0, 7.0]  # groups take 1, 1, 2, 1, 2 s
    assert grouped_windows(stamps, 8, 4, 8, 4) == 64 / 3  # windows [1, 4] s and [4, 7] s: 3 s each
    assert grouped_windows(stamps[:4], 8, 0, 1, 1) == 8  # a stamp a step: 8 images in 1, 1 and 2 s; median 8


def test_ratios_pair_the_runs_of_each_round():
    """Lightning ran at half the plain loop's speed in two of three rounds; the medians (30 vs 30) would hide it."""
    from lightning_cnn.benchmark import paired_ratio

    lightning = {"images_per_s_runs": [50.0, 10.0, 30.0]}
    plain = {"images_per_s_runs": [100.0, 20.0, 30.0]}
    assert paired_ratio(lightning, plain) == 0.5


def test_floor_reports_both_loops_per_step_cost():
    done = bench("--floor", "--floor-steps", 100)
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"plain PyTorch ([\d.]+) ms, Lightning ([\d.]+) ms; Lightning adds (-?[\d.]+) ms", done.stdout)
    assert match, done.stdout
    plain, lightning, added = map(float, match.groups())
    # Three figures each rounded to 0.001 ms: their difference may be off by up to 0.0015.
    assert plain > 0 and lightning > 0 and added == pytest.approx(lightning - plain, abs=0.0016)


def test_float16_on_cpu_is_refused_with_the_fix():
    done = bench("--precision", "16-mixed", timeout=120)
    assert done.returncode == 2
    assert "--accelerator gpu" in done.stderr and "bf16-mixed" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_gpu_without_a_gpu_is_refused_with_the_fix():
    done = bench("--accelerator", "gpu", "--contenders", "plain_torch", timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "--accelerator cpu" in done.stderr
