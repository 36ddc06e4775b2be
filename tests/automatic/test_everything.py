"""`segment_everything`: the one entry point, its method choice, and an empty result that
says which filter removed everything and what to lower."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_sam import AutomaticMaskGenerator, load_model, masks_to_labels, segment_everything
from napari_sam.automatic import MICROSCOPY_DEFAULTS, NoObjectsWarning
from tests.stand_ins import coins, disc_model, head_model


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
    strict = {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.9}  # the microscopy ones
    with pytest.warns(NoObjectsWarning, match=r"predicted-IoU filter \(> 0.8\).*Lower "
                      r"pred_iou_thresh, e.g. to 0\.\d\d") as caught:  # fmt: skip
        labels = segment_everything(bundled, image, "amg", points_per_side=8, **strict)
    assert not labels.any()
    # The threshold it suggests lets masks through.
    suggested = float(str(caught[0].message).split("e.g. to ")[1][:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoObjectsWarning)
        found = segment_everything(bundled, image, "amg", points_per_side=8,
                                   pred_iou_thresh=suggested, stability_score_thresh=0.0)
    assert found.max() > 0


def test_a_model_carries_its_grid_thresholds(bundled):
    from napari_sam.automatic import grid_defaults
    from napari_sam.zoo import get_entry

    carried = dict(get_entry("tiny_cells").grid_defaults)
    assert bundled.grid_defaults == carried and carried["pred_iou_thresh"] < 0.8
    assert grid_defaults(bundled) == {**MICROSCOPY_DEFAULTS, **carried}
    image = coins()
    labels = segment_everything(bundled, image, "amg", points_per_side=8)
    explicit = segment_everything(bundled, image, "amg", points_per_side=8, **carried)
    assert np.array_equal(labels, explicit) and labels.max() > 0
    assert disc_model().grid_defaults == {}  # a model from elsewhere: the microscopy ones


@pytest.mark.parametrize("value", [0, 255])
def test_an_empty_image_gives_empty_labels(bundled, value):
    blank = np.full((64, 64), value, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoObjectsWarning)
        for model, method in ((bundled, "amg"), (head_model(), "ais")):
            labels = segment_everything(model, blank, method, points_per_side=4)[None] if (
                method == "amg") else segment_everything(model, blank, method)[None]
            assert labels.shape == (1, 64, 64) and not labels.any(), method


def test_bad_input(bundled):
    with pytest.raises(ValueError, match="method must be"):
        segment_everything(bundled, coins(), method="watershed")
    with pytest.raises(ValueError, match="no instance segmentation head"):
        segment_everything(disc_model(), coins(), method="ais")
    with pytest.raises(ValueError, match="segment_everything_slices"):
        segment_everything(bundled, np.zeros((4, 32, 32)))
    with pytest.raises(ValueError, match="points_per_side"):
        segment_everything(bundled, coins(), points_per_side=0)


def test_the_grid_decoded_once_gives_what_a_direct_run_gives_without_decoding_again():
    from napari_sam.automatic import EverythingSegmenter

    model, image = disc_model(), coins()[:96, :128]
    segmenter = EverythingSegmenter(model, "amg", points_per_side=4)
    segmenter.decode(image)
    calls = []
    decode = model.decode_iou_first
    model.decode_iou_first = lambda *a, **k: calls.append(1) or decode(*a, **k)
    settings = [
        {"stability_score_thresh": 0.8},
        {"stability_score_thresh": 0.8, "box_nms_thresh": 0.3},
        {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "min_mask_region_area": 0},
    ]
    counts = []
    for filters in settings:
        labels = segmenter.labels(**filters)
        assert not calls  # filtering only: the model is not run again
        model.decode_iou_first = decode
        expected = segment_everything(model, image, "amg", points_per_side=4, **filters)
        model.decode_iou_first = lambda *a, **k: calls.append(1) or decode(*a, **k)
        assert np.array_equal(labels, expected)
        counts.append(int(labels.max()))
    assert len(set(counts)) > 1  # the settings make a difference
    with pytest.warns(NoObjectsWarning, match="predicted-IoU filter"):
        assert not segmenter.labels(pred_iou_thresh=0.99).any()


def test_segmenter_errors():
    from napari_sam.automatic import EverythingSegmenter

    model = disc_model()
    with pytest.raises(ValueError, match="Unknown parameter"):
        EverythingSegmenter(model, "amg", center_distance_threshold=0.5)
    with pytest.raises(ValueError, match="no instance segmentation head"):
        EverythingSegmenter(model, "ais")
    segmenter = EverythingSegmenter(model)
    assert segmenter.method == "amg"  # no head: the grid
    with pytest.raises(RuntimeError, match="decode"):
        segmenter.labels()


def test_ais_is_the_heads_maps_through_the_watershed_and_the_default_with_a_head():
    from napari_sam.automatic import EverythingSegmenter, predict_instance_maps

    model, image = head_model(), coins()
    maps = predict_instance_maps(model, image)
    labels = segment_everything(model, image)  # a head: "ais" without asking
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert np.array_equal(labels, maps.labels()) and labels.max() > 3
    lowered = segment_everything(model, image, "ais", foreground_threshold=0.7)
    assert np.array_equal(lowered, maps.labels(foreground_threshold=0.7))
    assert lowered.max() != labels.max()
    # Decoded once, labelled again without running the head.
    segmenter = EverythingSegmenter(model)
    segmenter.decode(image)
    calls = []
    model.instance_decoder.register_forward_hook(lambda *_: calls.append(1))
    assert np.array_equal(segmenter.labels(foreground_threshold=0.7), lowered)
    assert np.array_equal(segmenter.labels(), labels) and not calls
    with pytest.raises(ValueError, match="Unknown parameter"):
        segment_everything(model, image, "ais", pred_iou_thresh=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segment_everything(model, image, "ais", foreground_threshold=1.5)


def test_break_test_findings(bundled):
    """From a new user's break test: wrong parameters are errors that say what to do, and
    a decoded grid explains an empty result as a direct run does."""
    from napari_sam.automatic import EverythingSegmenter, segment_everything_slices

    image = coins()[:96, :128]
    segmenter = EverythingSegmenter(bundled, "amg")
    segmenter.decode(image, points_per_side=8)
    with pytest.raises(ValueError, match="pass them to decode"):
        segmenter.labels(points_per_side=16)
    filters = {"pred_iou_thresh": 0.3, "stability_score_thresh": 0.99}
    with pytest.warns(NoObjectsWarning) as pooled:
        assert not segmenter.labels(**filters).any()
    with pytest.warns(NoObjectsWarning) as direct:
        assert not segment_everything(bundled, image, "amg", points_per_side=8, **filters).any()
    assert str(pooled[0].message) == str(direct[0].message)
    assert "stability filter" in str(direct[0].message)
    for call in (lambda: segment_everything(bundled, image, "amg", min_size=5),
                 lambda: segment_everything_slices(bundled, np.stack([image] * 2), min_size=5)):
        with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['min_size'\]"):
            call()
    with pytest.raises(ValueError, match="no instance segmentation head") as error:
        segment_everything(bundled, image, "ais")
    assert "tiny_cells" not in str(error.value)  # it has none to offer


def test_a_thin_image_gets_a_default_grid_it_can_hold():
    """A 6 x 300 strip: the default 32 x 32 grid would be denser than its 6 rows, so the
    default becomes 6 x 6 (what an explicit points_per_side=6 gives) for one image, a
    stack and a decoded grid alike; a points_per_side the caller gives is kept, and
    refused when too dense."""
    from napari_sam.automatic import EverythingSegmenter, segment_everything_slices

    model, image = disc_model(), coins()[100:106, :300]
    quiet = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}  # every candidate
    expected = segment_everything(model, image, "amg", points_per_side=6, **quiet)
    assert expected.max() > 0
    assert np.array_equal(segment_everything(model, image, "amg", **quiet), expected)
    stack = segment_everything_slices(model, np.stack([image, image]), method="amg", **quiet)
    assert np.array_equal(stack[0], expected)
    segmenter = EverythingSegmenter(model, "amg")
    segmenter.decode(image)
    assert segmenter.decoded.decode_params["points_per_side"] == 6
    with pytest.raises(ValueError, match="denser than the image"):
        segment_everything(model, image, "amg", points_per_side=32)


def test_an_rgb_stack_is_segmented_plane_by_plane():
    from napari_sam.automatic import segment_everything_slices

    model, plane = head_model(), coins()[:96, :96]
    stack = np.stack([np.stack([plane] * 3, -1)] * 2)  # (Z, Y, X, 3)
    labels = segment_everything_slices(model, stack)
    assert labels.shape == (2, 96, 96)
    assert np.array_equal(labels[0], segment_everything(model, np.stack([plane] * 3, -1)))


def test_a_model_s_own_ais_thresholds_are_its_defaults():
    """A head's zoo entry may carry its thresholds (`model.ais_defaults`, as
    `grid_defaults` for the grid): they are what AIS uses unless told otherwise, by
    `segment_everything`, the maps' `labels()` and `EverythingSegmenter`."""
    from napari_sam.automatic import (
        AIS_DEFAULTS,
        EverythingSegmenter,
        ais_defaults,
        predict_instance_maps,
    )

    model, image = head_model(), coins()
    plain = segment_everything(model, image)  # AIS_DEFAULTS: 29 objects (stand_ins)
    strict = segment_everything(model, image, foreground_threshold=0.7)
    assert plain.max() > strict.max() > 0
    model.ais_defaults = {"foreground_threshold": 0.7}
    assert ais_defaults(model) == {**AIS_DEFAULTS, "foreground_threshold": 0.7}
    np.testing.assert_array_equal(segment_everything(model, image), strict)
    np.testing.assert_array_equal(predict_instance_maps(model, image).labels(), strict)
    segmenter = EverythingSegmenter(model)
    segmenter.decode(image)
    assert segmenter.defaults["foreground_threshold"] == 0.7
    np.testing.assert_array_equal(segmenter.labels(), strict)
    np.testing.assert_array_equal(segmenter.labels(foreground_threshold=0.5), plain)
