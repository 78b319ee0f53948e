"""Metrics against hand-computed cases."""

import numpy as np
import pytest

from lam.errors import LamflowError
from lam.metrics import ConfusionAccumulator, confusion_matrix, scores_from_confusion


def test_confusion_matrix_counts_pairs_and_skips_ignore():
    target = np.array([[0, 0, 1], [1, 2, 9]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=9)
    expected = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_iou_and_f1_by_hand():
    # class 0: TP=1, FP=0, FN=1 -> IoU 1/2, F1 2/3; class 1: TP=2, FP=1, FN=0 -> IoU 2/3, F1 4/5
    cm = np.array([[1, 1], [0, 2]])
    s = scores_from_confusion(cm, ["a", "b"])
    np.testing.assert_allclose(s.iou, [0.5, 2 / 3])
    np.testing.assert_allclose(s.f1, [2 / 3, 0.8])
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert s.mf1 == pytest.approx((2 / 3 + 0.8) / 2)
    d = s.as_dict()
    assert d["per_class"]["a"] == {"iou": 50.0, "f1": 66.67}
    assert d["pixel_accuracy"] == 75.0


def test_absent_class_is_nan_and_left_out_of_mean():
    cm = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = scores_from_confusion(cm)
    assert np.isnan(s.iou[2])
    assert s.miou == 1.0
    assert s.as_dict()["per_class"]["2"]["iou"] is None


def test_accumulator_sums_frames():
    acc = ConfusionAccumulator(2, ignore_index=255)
    acc.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    acc.update(np.ones((2, 2), np.uint8), np.array([[1, 1], [0, 255]], np.uint8))
    assert acc.n_images == 2
    np.testing.assert_array_equal(acc.matrix, [[4, 1], [0, 2]])


def test_out_of_range_ids_raise_with_value():
    with pytest.raises(LamflowError, match="label id 7"):
        confusion_matrix(np.zeros((1, 2)), np.array([[0, 7]]), 3, ignore_index=None)
    with pytest.raises(LamflowError, match="shape"):
        confusion_matrix(np.zeros((1, 2)), np.zeros((2, 1)), 3)
