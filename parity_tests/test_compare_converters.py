"""Smoke test of scripts/compare_converters.py's logic (keras_ref.compare) on one small model.

The peers (tf2onnx, onnx2torch: the [compare] extra) need not be installed: their cells then say so. The full
comparison is run by hand and committed as reports/converters.md.
"""

from __future__ import annotations

import json

import pytest

from keras_ref.compare import TOOLS, compare_model, render, run

pytestmark = pytest.mark.keras


def test_compare_one_small_model(tmp_path):
    row = compare_model("MobileNetV2-0.35", 32, None, repeats=1, timeout=300)
    ours = row["keras_ref.convert"]
    assert ours["converts"] == "yes" and ours["trains_one_step"] == "yes" and ours["images_per_s"] > 0
    # the comparison report has no float64 run; a 1e-5 relative bound is far above MobileNetV2-0.35's rounding
    # (measured 1e-7 relative) and far below any conversion mistake (O(1))
    assert ours["max_abs_diff"] <= 1e-5 * max(1.0, row["max_abs_output"])
    for peer in TOOLS[1:]:
        assert row[peer]["converts"] in ("yes", "no", "not installed"), row[peer]
        assert row[peer]["converts"] == "yes" or row[peer]["error"], row[peer]
    text = render([row], {"date": "d", "machine": "m", "threads": 1, "versions": "v", "command": "c"})
    assert text.count("| MobileNetV2-0.35 | 32x32x3 |") == len(TOOLS)


def test_run_writes_the_report_files(tmp_path):
    run(["MobileNetV2-0.35"], 64, tmp_path, None, repeats=1, tools=("keras_ref.convert",), command="test")
    data = json.loads((tmp_path / "converters.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["MobileNetV2-0.35"]
    assert "keras_ref.convert" in (tmp_path / "converters.md").read_text()
