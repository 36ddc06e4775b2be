"""Training an instance head: its targets, and the scores it is judged by."""

import numpy as np
import pytest

from napari_sam.training.evaluate import instance_scores
from napari_sam.training.instance_head import instance_targets


def test_targets_are_zero_at_the_centre_and_one_at_the_rim_and_outside():
    labels = np.zeros((40, 60), np.int32)
    rows, cols = np.mgrid[:40, :60]
    labels[(rows - 20) ** 2 + (cols - 15) ** 2 <= 100] = 1  # a disc of radius 10
    labels[5:35, 30:58] = 2  # a rectangle touching nothing
    foreground, centre, boundary = instance_targets(labels)
    assert np.array_equal(foreground, labels > 0)
    assert centre[20, 15] == 0 and boundary[20, 15] == 0  # the disc's innermost pixel
    assert centre[labels == 0].min() == boundary[labels == 0].min() == 1
    ring = (labels == 1) & ((rows - 20) ** 2 + (cols - 15) ** 2 > 81)
    assert boundary[ring].min() > 0.8 and centre[ring].min() > 0.8
    for index in (1, 2):  # normalised per object
        assert centre[labels == index].max() == pytest.approx(1.0)
        assert boundary[labels == index].max() == pytest.approx(1.0, abs=0.12)


def test_touching_objects_get_a_boundary_between_them():
    labels = np.zeros((20, 40), np.int32)
    labels[2:18, 2:20], labels[2:18, 20:38] = 1, 2
    _, _, boundary = instance_targets(labels)
    assert boundary[10, 19] == boundary[10, 20] == 1.0  # the touching columns are rims
    assert boundary[10, 10] < 0.2 and boundary[10, 29] < 0.2


def test_instance_scores():
    truth = np.zeros((20, 20), np.int32)
    truth[:8, :8], truth[10:, 10:] = 1, 2
    assert instance_scores(truth, truth) == {"f1": 1.0, "msa": 1.0}
    half = truth.copy()
    half[half == 2] = 0  # one object missed
    assert instance_scores(half, truth)["f1"] == pytest.approx(2 / 3)
    assert instance_scores(half, truth)["msa"] == pytest.approx(0.5)
    shrunk = truth.copy()
    shrunk[:8, 6:8] = 0  # IoU 0.75: counted up to the 0.75 threshold of 0.5..0.95
    scores = instance_scores(shrunk, truth)
    assert scores["f1"] == 1.0
    # Thresholds 0.5..0.75 (6 of 10) see 2 TP; 0.8..0.95 see 1 TP, 1 FP, 1 FN.
    assert scores["msa"] == pytest.approx((6 * 1.0 + 4 * (1 / 3)) / 10)
    empty = np.zeros_like(truth)
    assert instance_scores(empty, empty) == {"f1": 1.0, "msa": 1.0}
    assert instance_scores(empty, truth) == {"f1": 0.0, "msa": 0.0}
