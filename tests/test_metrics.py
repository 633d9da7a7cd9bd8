"""Metrics against hand-computed examples."""

import numpy as np
import pytest

from jaxvrp.metrics import SegmentationMeter, confusion, markdown_table


def test_confusion_counts_and_ignore():
    pred = np.array([[[1, 1, 0, 0]]], bool)
    target = np.array([[[1, 0, 1, 0]]], bool)
    assert [int(x[0]) for x in confusion(pred, target)] == [1, 1, 1, 1]
    ignore = np.array([[[0, 1, 0, 0]]], bool)
    assert [int(x[0]) for x in confusion(pred, target, ignore)] == [1, 0, 1, 1]


def test_miou_sums_per_class_before_dividing():
    m = SegmentationMeter()
    # class 1, episode a: tp 2, fp 0, fn 2 (IoU 0.5); episode b: tp 1, fp 1, fn 0 (IoU 0.5)
    # -> class 1: 3 / 6 = 0.5; class 2: tp 0, fn 1 -> 0
    pred = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)[:, None]
    target = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]], bool)[:, None]
    m.update(pred, target, [1, 1, 2])
    r = m.result()
    assert r["per_class_iou"] == {1: 0.5, 2: 0.0}
    assert r["miou"] == pytest.approx(0.25)
    # totals: tp 3, fp 1, fn 3, tn 5 -> fg 3/7, bg 5/9
    assert r["fb_iou"] == pytest.approx((3 / 7 + 5 / 9) / 2)
    assert r["tpr"] == pytest.approx(3 / 6) and r["fpr"] == pytest.approx(1 / 6)
    assert r["tnr"] == pytest.approx(5 / 6) and r["fnr"] == pytest.approx(3 / 6)
    assert r["episodes"] == 3


def test_padding_episodes_are_not_counted():
    m = SegmentationMeter()
    pred = np.ones((2, 1, 2), bool)
    m.update(pred, pred, [1, 1], valid=[True, False])
    assert m.result()["episodes"] == 1
    with pytest.raises(ValueError, match="no episodes"):
        SegmentationMeter().result()
    table = markdown_table({"VRP-SAM": m.result()})
    assert "| VRP-SAM | 100.0 | 50.0 |" in table
