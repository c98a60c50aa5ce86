"""bench.py's seconds-long smoke mode: proves the script runs all three contenders and writes its records.

Speed itself is never asserted here (timed tests are flaky); scripts/bench.py prints the ratios.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.keras
def test_bench_smoke_writes_one_record_per_contender(data_dir, tmp_path):
    out = tmp_path / "records.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts/bench.py"), "--smoke", "--data-dir", str(data_dir),
                           "--json", str(out), "--out", str(tmp_path / "bench.md")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["contender"] for r in records] == ["keras", "plain_torch", "lightning"]
    for record in records:
        assert {"model", "batch_size", "precision", "contender", "images_per_s", "peak_mem_mb"} <= record.keys()
        assert record["images_per_s"] > 0 and record["peak_mem_mb"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "Lightning/Keras" in table and "mnist_cnn_small" in table
