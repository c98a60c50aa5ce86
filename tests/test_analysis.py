"""lightning_cnn.analysis on hand-made arrays: every expected number is worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_cnn import analysis
from lightning_cnn.specs import TABLE9

# 3 classes, 8 samples.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 1, 0, 1, 2, 2, 1, 1])
# true 0: pred 0,1,0 -> [2,1,0]; true 1: pred 1,2 -> [0,1,1]; true 2: pred 2,1,1 -> [0,2,1]
CM = np.array([[2, 1, 0], [0, 1, 1], [0, 2, 1]])


def test_confusion_matrix_counts_rows_true_columns_predicted():
    cm = analysis.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, CM)
    assert cm.dtype == np.int64
    assert cm.sum() == len(Y_TRUE)


def test_confusion_matrix_keeps_absent_classes_and_checks_input():
    cm = analysis.confusion_matrix([0, 0], [0, 0], 4)
    assert cm.shape == (4, 4) and cm[0, 0] == 2 and cm.sum() == 2
    np.testing.assert_array_equal(analysis.confusion_matrix(Y_TRUE, Y_PRED), CM)  # classes inferred: 3
    with pytest.raises(ValueError, match="differ in length"):
        analysis.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        analysis.confusion_matrix([0, 2], [0, 1], 2)


def test_accuracy_and_per_class_accuracy():
    assert analysis.accuracy(CM) == pytest.approx(4 / 8)  # diagonal 2 + 1 + 1
    np.testing.assert_allclose(analysis.per_class_accuracy(CM), [2 / 3, 1 / 2, 1 / 3])
    with_empty = np.array([[1, 0], [0, 0]])
    per_class = analysis.per_class_accuracy(with_empty)
    assert per_class[0] == 1.0 and math.isnan(per_class[1])


def test_most_confused_pairs_largest_first_ties_by_class():
    # off-diagonal counts: (0->1)=1, (1->2)=1, (2->1)=2
    assert analysis.most_confused_pairs(CM) == [(2, 1, 2), (0, 1, 1), (1, 2, 1)]
    assert analysis.most_confused_pairs(CM, top=1) == [(2, 1, 2)]
    assert analysis.most_confused_pairs(np.eye(3, dtype=int) * 5) == []


def test_labels_of_accepts_ids_one_hot_and_cifar_shape():
    np.testing.assert_array_equal(analysis.labels_of(np.array([[3], [1]])), [3, 1])  # CIFAR-10 (N, 1)
    np.testing.assert_array_equal(analysis.labels_of(np.eye(3)[[2, 0]]), [2, 0])


PROBS = np.array([
    [0.9, 0.1, 0.0],  # true 0, right
    [0.3, 0.6, 0.1],  # true 0, wrong (pred 1 at 0.6)
    [0.2, 0.1, 0.7],  # true 1, wrong (pred 2 at 0.7)
    [0.1, 0.8, 0.1],  # true 1, right
    [0.05, 0.9, 0.05],  # true 2, wrong (pred 1 at 0.9)
    [0.3, 0.6, 0.1],  # true 2, wrong (pred 1 at 0.6, ties with index 1)
])
PROBS_TRUE = np.array([0, 0, 1, 1, 2, 2])


def test_misclassified_indices_most_confident_first():
    np.testing.assert_array_equal(analysis.misclassified_indices(PROBS, PROBS_TRUE), [4, 2, 1, 5])
    np.testing.assert_array_equal(analysis.misclassified_indices(PROBS, PROBS_TRUE, limit=2), [4, 2])
    assert len(analysis.misclassified_indices(PROBS[[0, 3]], PROBS_TRUE[[0, 3]])) == 0


def test_classification_summary_names_classes():
    summary = analysis.classification_summary(PROBS, np.eye(3)[PROBS_TRUE], ["cat", "dog", "frog"])
    assert summary["n"] == 6 and summary["errors"] == 4 and summary["accuracy"] == pytest.approx(2 / 6)
    assert summary["per_class_accuracy"] == {"cat": 0.5, "dog": 0.5, "frog": 0.0}
    assert summary["most_confused"][0] == {"true": "frog", "predicted": "dog", "count": 2}


def test_mean_std_and_format():
    mean, std = analysis.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)  # sample std (ddof=1)
    assert analysis.mean_std([5.0]) == (5.0, None)
    assert analysis.format_mean_std([0.9861, 0.9871]) == "98.66 ± 0.07"
    assert analysis.format_mean_std([0.5]) == "50.00" and analysis.format_mean_std([]) == "–"


def test_history_rows_from_keras_history():
    history = {"loss": [0.5, 0.3], "accuracy": [0.8, 0.9], "val_loss": [0.4, 0.35], "val_accuracy": [0.85, 0.88]}
    rows = analysis.history_rows(history, seconds=[1.5, 1.2])
    assert rows == [
        {"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4, "val_acc": 0.85, "seconds": 1.5},
        {"epoch": 2, "train_loss": 0.3, "train_acc": 0.9, "val_loss": 0.35, "val_acc": 0.88, "seconds": 1.2},
    ]
    assert analysis.history_rows({"loss": [1.0]}) == [{"epoch": 1, "train_loss": 1.0}]


def test_bands_cover_every_mnist_id_as_documented():
    bands = analysis.BANDS
    assert bands["mnist_cnn_tf_tutorial"].low == pytest.approx(98.56)
    assert bands["mnist_cnn_small"].low == pytest.approx(98.12)
    assert (bands["mnist_cnn_qiita"].metric, bands["mnist_cnn_qiita"].low) == ("train_acc", 98.5)
    assert (bands["mnist_cnn_dropout"].metric, bands["mnist_cnn_dropout"].low) == ("val_acc", pytest.approx(97.9))
    assert bands["mnist_mlp_128_64"].low == 96.5 and bands["mnist_mlp_128_64"].reason
    for row, (*_, test_acc) in enumerate(TABLE9, start=1):
        band = bands[f"mnist_mlp_t9_{row}"]
        assert (band.low, band.high) == (pytest.approx(test_acc - 1), pytest.approx(test_acc + 1))
        assert band.check(test_acc + 0.99) and not band.check(test_acc - 1.01)


def test_band_value_reads_a_run():
    run = {"test_accuracy": 0.9862, "history_rows": [{"epoch": 1, "train_acc": 0.9, "val_acc": 0.95},
                                                     {"epoch": 2, "train_acc": 0.99, "val_acc": 0.984}]}
    assert analysis.band_value(run, "test_acc") == pytest.approx(98.62)
    assert analysis.band_value(run, "train_acc") == pytest.approx(99.0)
    assert analysis.band_value(run, "val_acc") == pytest.approx(98.4)


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_misclassified_grid_png_gray_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    path = analysis.plot_misclassified_grid(gray, PROBS_TRUE, PROBS, [4, 2, 1], ["0", "1", "2"],
                                            tmp_path / "grid.png", title="t")
    assert _is_png(path)
    rgb = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    assert _is_png(analysis.plot_misclassified_grid(rgb, PROBS_TRUE, PROBS, [], ["cat", "dog", "frog"],
                                                    tmp_path / "empty.png"))
    assert not list(tmp_path.glob(".*.part"))  # atomic writes leave no temporary files


def test_confusion_and_learning_curve_figures(tmp_path):
    assert _is_png(analysis.plot_confusion_matrices({"keras": CM, "lightning": CM}, ["a", "b", "c"],
                                                    tmp_path / "cm.png", title="x"))
    rows = analysis.history_rows({"loss": [0.5, 0.3], "accuracy": [0.8, 0.9], "val_loss": [0.4, 0.35],
                                  "val_accuracy": [0.85, 0.88]})
    assert _is_png(analysis.plot_learning_curves_both({"keras": rows, "lightning": rows, "empty": []},
                                                      tmp_path / "curves.png"))


def test_machine_description_names_cpu_and_cores():
    text = analysis.machine_description(threads=1, parallel=2)
    assert "cores" in text and "2 training process(es)" in text and analysis.cpu_model()
