"""``lightning-cnn-bench --acceptance`` (keras_ref/bench_twins.py) runs end to end and its report says what it
measured: every column filled, the copies equal to Keras within float32 rounding, the ceiling computed from the
recorded operation counts. Nothing about speed is asserted (speed targets are read from the report, not tested).
"""

from __future__ import annotations

import json

from keras_ref import bench_twins


def test_one_model_end_to_end(tmp_path):  # real CIFAR-10 images from the documented data lookup
    out = tmp_path / "bench.md"
    assert bench_twins.main(["--models", "MobileNetV2-0.35", "--threads", "1", "--batches", "1", "--rounds", "1",
                             "--no-train", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())["results"][0]
    record = result["inference"][0]
    assert record["model"] == "MobileNetV2-0.35" and record["batch"] == 1
    # float32 rounding through ~50 layers with calibrated BN statistics (outputs ~0.4): the same 1e-5 rule as the
    # parity tests, as an absolute bound here.
    assert max(record["max_abs_diff"].values()) < 1e-5, record["max_abs_diff"]
    # MobileNetV2-0.35 at 64x64: 4.8 M multiply-adds (Keras's own summary of the architecture scaled to 64 px).
    assert 0.008 < record["gflop_per_image"] < 0.011, record["gflop_per_image"]
    assert result["best_gflops"] > 1
    row = next(line for line in out.read_text().splitlines() if line.startswith("| MobileNetV2-0.35"))
    assert "–" not in row and row.count("×") == 5, row  # four ratios and the ceiling


def test_ceiling_is_the_fastest_rate_over_kerass():
    result = {"threads": 1, "best_gflops": 100.0, "inference": [
        {"gflop_per_image": 2.0, "keras_images_per_s": 40.0, "prepared_images_per_s": 60.0},  # 80 and 120 GFLOP/s
        {"gflop_per_image": 1.0, "keras_images_per_s": 50.0, "prepared_images_per_s": 45.0}]}
    assert bench_twins.fastest_rate(result) == 120.0  # the copy outran the kernels
    assert bench_twins._ceiling_cells(result["inference"][0], 120.0) == "80 | 1.50×"
    # A run from before operation counts were recorded (a --merge of older JSON): dashes.
    assert bench_twins._ceiling_cells({"keras_images_per_s": 1.0}, 120.0) == "– | –"
    assert bench_twins.fastest_rate({"threads": 1, "inference": []}) is None
