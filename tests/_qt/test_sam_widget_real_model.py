"""The widget with the bundled model's real decoder, under the widget's threads: the
decoder's per-image state is prepared in the embedding worker, refinement feeds the
previous low-res logits back, and switching slices must never decode on another slice's
embedding. Each result is checked against a fresh `SamPredictor` on the same slice."""

import numpy as np
import pytest

from napari_sam import SamPredictor, load_model
from napari_sam._qt._layers import PREVIEW_NAME
from napari_sam._sample_data import blobs_stack
from tests._qt.helpers import open_widget


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny_cells", device="cpu")


def blob_centre(stack, z):
    """The brightest point of slice z (the middle of a blob)."""
    row, col = np.unravel_index(np.argmax(stack[z]), stack[z].shape)
    return int(row), int(col)


def reference(model, image, **prompts):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    return predictor.predict(**prompts)


def test_click_switch_slice_click_refine_commit(make_napari_viewer, bundled):
    stack = blobs_stack((6, 128, 128), count=6, seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    widget = open_widget(viewer, bundled)
    points = widget.points_layer

    # Click on slice 1.
    viewer.dims.set_current_step(0, 1)
    assert widget.compute_embedding(wait=True)
    first = blob_centre(stack, 1)
    points.add([[1, *first]])
    masks, scores, _ = reference(bundled, stack[1], points=[first])
    assert sorted(c.iou for c in widget.candidates) == pytest.approx(sorted(scores), abs=1e-5)
    chosen = widget.selected
    assert any(np.array_equal(chosen.mask, m) for m in masks)
    assert chosen.mask[first]

    # Switch to slice 4 and click there: its own embedding, never slice 1's.
    viewer.dims.set_current_step(0, 4)
    assert widget.compute_embedding(wait=True)
    assert len(widget.cache) == 2
    second = blob_centre(stack, 4)
    points.add([[4, *second]])
    masks4, scores4, _ = reference(bundled, stack[4], points=[second])
    assert sorted(c.iou for c in widget.candidates) == pytest.approx(sorted(scores4), abs=1e-5)
    best = widget.candidates[int(np.argmax([c.iou for c in widget.candidates]))]
    np.testing.assert_array_equal(best.mask, masks4[int(np.argmax(scores4))])

    # Refine with a negative point: the previous logits are the mask input.
    logits = widget.selected.logits
    off = (second[0], min(second[1] + 12, 127))
    widget.toggle_polarity()  # the N key: new points are negative
    points.add([[4, *off]])
    widget.toggle_polarity()
    assert points.features["polarity"].tolist()[-1] == "negative"
    refined, refined_scores, _ = reference(
        bundled, stack[4], points=[second, off], labels=[1, 0], mask_input=logits
    )
    assert [c.name for c in widget.candidates] == ["mask"]
    np.testing.assert_array_equal(widget.selected.mask, refined[0])
    assert widget.selected.iou == pytest.approx(float(refined_scores[0]), abs=1e-5)

    # Commit on slice 4 only; the preview is cleared.
    expected = widget.selected.mask.copy()
    assert widget.commit() == [1]
    labels = widget.output_layer.data
    np.testing.assert_array_equal(labels[4] > 0, expected)
    assert not labels[[0, 1, 2, 3, 5]].any()
    assert not viewer.layers[PREVIEW_NAME].data.any()
    # The point on slice 1 is still a prompt there: back on slice 1 it decodes at once
    # from the cached embedding, with slice 1's answer.
    viewer.dims.set_current_step(0, 1)
    widget.update_prediction()
    assert not widget.busy
    assert sorted(c.iou for c in widget.candidates) == pytest.approx(sorted(scores), abs=1e-5)
