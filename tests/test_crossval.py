"""Cross-validation: stratified folds (numpy), metrics from probabilities, and tiny end-to-end runs of
scripts/crossval.py on both frameworks (MNIST and CIFAR-10, real data, small subsets, one epoch)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_cnn.crossval import cross_entropy, fold_metrics, stratified_kfold

REPO = Path(__file__).resolve().parents[1]


def _labels(seed=0, n=1003, classes=10):
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("folds", [2, 5, 7])
def test_folds_are_disjoint_cover_everything_and_stratified(folds):
    y = _labels()
    splits = stratified_kfold(y, folds, seed=3)
    assert len(splits) == folds
    val_all = np.concatenate([val for _, val in splits])
    assert sorted(val_all.tolist()) == list(range(len(y)))  # every index held out exactly once
    for train, val in splits:
        assert len(np.intersect1d(train, val)) == 0
        assert len(train) + len(val) == len(y)
        assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)  # sorted, no repeats
    sizes = [len(val) for _, val in splits]
    assert max(sizes) - min(sizes) <= 1
    for c in np.unique(y):  # each class split evenly: per-fold counts differ by at most one
        counts = [int(np.sum(y[val] == c)) for _, val in splits]
        assert sum(counts) == np.sum(y == c)
        assert max(counts) - min(counts) <= 1, (c, counts)


def test_folds_deterministic_with_seed_and_accept_one_hot():
    y = _labels(1, 500)
    a, b = stratified_kfold(y, 5, seed=7), stratified_kfold(np.eye(10)[y], 5, seed=7)
    for (ta, va), (tb, vb) in zip(a, b):
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(ta, tb)
    c = stratified_kfold(y, 5, seed=8)
    assert any(not np.array_equal(va, vc) for (_, va), (_, vc) in zip(a, c))


def test_fold_errors_and_small_class_warning():
    with pytest.raises(ValueError, match="at least 2 folds"):
        stratified_kfold([0, 1, 0, 1], 1)
    with pytest.raises(ValueError, match="only 4 samples"):
        stratified_kfold([0, 1, 0, 1], 5)
    with pytest.warns(UserWarning, match="fewer than 3 folds"):
        stratified_kfold([0, 0, 0, 0, 1, 1], 3)


def test_cross_entropy_and_accuracy_from_probabilities():
    probs = np.array([[0.5, 0.5], [0.1, 0.9], [1.0, 0.0]])
    y = np.array([0, 1, 1])
    # -(ln 0.5 + ln 0.9 + ln 1e-7) / 3; argmax of row 0 is class 0 (first of a tie): right, right, wrong
    expected = -(np.log(0.5) + np.log(0.9) + np.log(1e-7)) / 3
    assert cross_entropy(probs, y) == pytest.approx(expected)
    metrics = fold_metrics(probs, y)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["loss"] == pytest.approx(expected)


def _crossval(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "crossval.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _check_report(out: Path, folds: int, n: int, classes: list[str], partial: bool):
    for name in ("crossval.md", "crossval.json", "learning_curves_folds.png", "confusion_matrix.png",
                 "misclassified.png"):
        assert (out / name).is_file(), name
    for name in ("learning_curves_folds.png", "confusion_matrix.png", "misclassified.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "crossval.json").read_text())
    assert len(data["folds"]) == folds and data["cv_size"] == n
    assert sum(f["val_size"] for f in data["folds"]) == n
    for f in data["folds"]:
        assert 0.0 <= f["val_accuracy"] <= 1.0 and 0.0 <= f["test_accuracy"] <= 1.0
        assert f["val_loss"] > 0 and np.isfinite(f["val_loss"]) and f["epochs_run"] == 1
        assert f["history_rows"][0]["val_acc"] == pytest.approx(f["val_accuracy"], abs=1e-3)
    accs = [f["val_accuracy"] for f in data["folds"]]
    assert data["val_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert data["val_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert list(data["out_of_fold"]["per_class_accuracy"]) == classes
    assert data["out_of_fold"]["n"] == n
    md = (out / "crossval.md").read_text()
    assert ("first 1,000 test images" in md) == partial
    assert "mean ± std" in md and "Most confused pairs" in md and "misclassified.png" in md
    return data


HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None
FRAMEWORKS = ["lightning", "keras"]
MNIST_ARGS = ["--model", "mnist_mlp_t9_4", "--folds", 3, "--train-subset", 2000, "--epochs", 1]
CIFAR_ARGS = ["--model", "cifar10_cnn", "--folds", 2, "--train-subset", 200, "--epochs", 1, "--allow-partial-test"]


def _mnist_run(framework, out, data_dir):
    """The MNIST cross-validation, then the same command with --resume (which must reuse every fold)."""
    args = [*MNIST_ARGS, "--framework", framework, "--data-dir", data_dir, "--out", out, "--threads", 1]
    first = _crossval(*args)
    return first, (_crossval(*args, "--resume") if first.returncode == 0 else None)


def _cifar_run(framework, out, data_dir):
    return _crossval(*CIFAR_ARGS, "--framework", framework, "--data-dir", data_dir, "--out", out, "--threads", 1)


@pytest.fixture(scope="module")
def end_to_end(request, tmp_path_factory, data_dir):
    """Every end-to-end run of this module, started together on first use, two at a time: each is one thread
    (``--threads 1``), so on 2 cores two of them take the time of one; only the selected tests' runs.
    (kind, framework) -> (future, out)."""
    selected = {(item.originalname, item.callspec.params.get("framework")) for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    runs = {}
    for kind, run in (("mnist", _mnist_run), ("cifar10", _cifar_run)):
        for framework in FRAMEWORKS:
            test = "test_crossval_mnist_end_to_end" if kind == "mnist" else "test_crossval_cifar10_tiny_subset"
            if (test, framework) not in selected or (framework == "keras" and not HAS_TENSORFLOW):
                continue
            out = tmp_path_factory.mktemp(f"cv_{kind}_{framework}") / "cv"
            runs[kind, framework] = pool.submit(run, framework, out, data_dir), out
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def _skip_without_tensorflow(framework):
    if framework == "keras" and not HAS_TENSORFLOW:
        pytest.skip("the Keras side needs the [keras] extra")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_crossval_mnist_end_to_end(framework, end_to_end):
    _skip_without_tensorflow(framework)
    future, out = end_to_end["mnist", framework]
    proc, again = future.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _check_report(out, 3, 2000, [str(i) for i in range(10)], partial=False)
    assert data["framework"] == framework and data["test_set"] == "10,000 test images"
    assert 0.75 < data["val_accuracy"]["mean"] < 0.97  # one epoch of an MLP on 1,333 images
    assert 0.75 < data["ensemble_test_accuracy"] < 0.98
    # --resume reuses the finished folds and gives the same numbers
    assert again.returncode == 0 and again.stdout.count("reusing") == 3
    assert json.loads((out / "crossval.json").read_text())["folds"][0]["val_accuracy"] == \
        data["folds"][0]["val_accuracy"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_crossval_cifar10_tiny_subset(framework, end_to_end):
    _skip_without_tensorflow(framework)
    future, out = end_to_end["cifar10", framework]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _check_report(out, 2, 200, ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                       "ship", "truck"], partial=True)
    assert data["test_set"] == "first 1,000 test images"
    assert "first 1,000 test images" in proc.stdout


def test_crossval_refuses_partial_cifar_test_set_and_bad_subset(tmp_path, data_dir):
    proc = _crossval("--model", "cifar10_cnn", "--data-dir", data_dir, "--out", tmp_path / "x")
    assert proc.returncode == 2 and "--allow-partial-test" in proc.stderr
    proc = _crossval("--model", "mnist_cnn_small", "--train-subset", 70000, "--data-dir", data_dir)
    assert proc.returncode == 2 and "70000" in proc.stderr
    proc = _crossval("--model", "no_such_model")
    assert proc.returncode == 2 and "valid ids" in proc.stderr
