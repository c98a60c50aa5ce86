"""scripts/cifar10_report.py: the document-003 CIFAR report, run for real on the Lightning side (300 images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def report(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "cifar10_report.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_recipe_row_on_the_lightning_side(data_dir, tmp_path):
    done = report("--runs", "recipe", "--frameworks", "lightning", "--data-dir", data_dir, "--allow-partial-test",
                  "--accelerator", "cpu", "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "cifar10" / "recipe__lightning.json").read_text())
    assert run["epochs_run"] == 10 and run["train_samples_last_epoch"] == 300 and run["test_is_partial"]
    table = (tmp_path / "cifar10.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| recipe"))
    assert f"{100 * run['test_accuracy']:.2f}%" in row and "| 300 | 10 |" in row
    assert "first 1,000 CIFAR-10 test images" in table and "scripts/train.py --model cifar10_cnn" in table
    records = json.loads((tmp_path / "cifar10.json").read_text())
    assert [(r["run"], r["framework"]) for r in records] == [("recipe", "lightning")]
    # Re-rendering trains nothing and gives the same table.
    again = report("--runs", "recipe", "--frameworks", "lightning", "--report-only", "--out", tmp_path,
                   "--allow-partial-test", "--data-dir", data_dir, "--accelerator", "cpu")
    assert again.returncode == 0 and (tmp_path / "cifar10.md").read_text() == table


def test_unknown_framework_is_refused(tmp_path):
    done = report("--frameworks", "jax", "--out", tmp_path)
    assert done.returncode == 2 and "jax" in done.stderr
