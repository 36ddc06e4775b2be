"""`segment_everything`: the one entry point, its method choice, and an empty result that
says which filter removed everything and what to lower."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_sam import AutomaticMaskGenerator, load_model, masks_to_labels, segment_everything
from napari_sam.automatic import MICROSCOPY_DEFAULTS, NoObjectsWarning
from tests.stand_ins import coins, disc_model


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny_cells")


def test_amg_is_the_grid_generator_with_microscopy_defaults():
    model, image = disc_model(), coins()[:96, :128]
    params = {"points_per_side": 4, "stability_score_thresh": 0.8}  # the discs' is 0.84
    labels = segment_everything(model, image, **params)
    generator = AutomaticMaskGenerator(model, **{**MICROSCOPY_DEFAULTS, **params})
    expected = masks_to_labels(generator.generate(image), image.shape)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert labels.max() > 0 and np.array_equal(labels, expected)
    assert np.array_equal(segment_everything(model, image, "amg", **params), labels)


def test_an_empty_result_says_which_filter_and_what_to_lower(bundled):
    image = coins()
    with pytest.warns(NoObjectsWarning, match=r"predicted-IoU filter \(> 0.8\).*Lower "
                      r"pred_iou_thresh, e.g. to 0\.\d\d") as caught:  # fmt: skip
        labels = segment_everything(bundled, image, points_per_side=8)
    assert not labels.any()
    # The threshold it suggests lets masks through.
    suggested = float(str(caught[0].message).split("e.g. to ")[1][:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoObjectsWarning)
        found = segment_everything(bundled, image, points_per_side=8,
                                   pred_iou_thresh=suggested, stability_score_thresh=0.0)
    assert found.max() > 0


def test_an_empty_image_gives_empty_labels(bundled):
    with pytest.warns(NoObjectsWarning):
        labels = segment_everything(bundled, np.zeros((64, 64), np.uint8), points_per_side=4)
    assert labels.shape == (64, 64) and not labels.any()


def test_bad_input(bundled):
    with pytest.raises(ValueError, match="method must be"):
        segment_everything(bundled, coins(), method="watershed")
    with pytest.raises(ValueError, match="no instance segmentation head"):
        segment_everything(bundled, coins(), method="ais")
    with pytest.raises(ValueError, match="segment_everything_slices"):
        segment_everything(bundled, np.zeros((4, 32, 32)))
    with pytest.raises(ValueError, match="points_per_side"):
        segment_everything(bundled, coins(), points_per_side=0)
