"""nD, RGB, scaled layers, and layers deleted while a worker runs."""

import time

import numpy as np
import pytest

from napari_sam._qt._layers import POINTS_NAME
from napari_sam._sample_data import blobs_stack
from tests._qt.helpers import add_point, open_widget, shown_preview
from tests.stand_ins import coins, disc_model


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_3d_stack_commits_on_two_slices(viewer):
    stack = blobs_stack((6, 96, 96), count=4)
    viewer.add_image(stack, name="stack")
    widget = open_widget(viewer, disc_model())
    assert widget.points_layer.ndim == 3
    viewer.dims.set_current_step(0, 1)
    add_point(widget, (1, 30, 40))
    widget.wait(timeout=60)
    preview = shown_preview(widget)
    assert preview[1, 30, 40] and not preview[[0, 2, 3, 4, 5]].any()
    assert widget.commit() == [1]
    viewer.dims.set_current_step(0, 4)
    add_point(widget, (4, 60, 50))
    widget.wait(timeout=60)
    assert len(widget.cache) == 2  # one embedding per slice
    assert widget.commit() == [2]
    labels = widget.output_layer.data
    assert labels.shape == stack.shape
    assert labels[1, 30, 40] == 1 and labels[4, 60, 50] == 2
    assert set(np.unique(labels[1])) == {0, 1} and set(np.unique(labels[4])) == {0, 2}
    assert not labels[[0, 2, 3, 5]].any()
    # back on slice 1, the cached embedding serves a new prompt at once
    viewer.dims.set_current_step(0, 1)
    add_point(widget, (1, 80, 80))
    assert not widget.busy and shown_preview(widget)[1, 80, 80]


def test_points_on_other_slice_are_ignored(viewer):
    viewer.add_image(blobs_stack((4, 64, 64), count=2), name="stack")
    widget = open_widget(viewer, disc_model())
    widget.compute_embedding(wait=True)
    add_point(widget, (2, 30, 30))  # slice 2, while slice 0 is on screen
    assert widget.candidates == []


def test_rgb_layer(viewer):
    rgb = np.stack([coins(), coins()[::-1], 255 - coins()], axis=-1)
    viewer.add_image(rgb, rgb=True, name="rgb")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    add_point(widget, (100, 120))
    preview = shown_preview(widget)
    assert preview.shape == coins().shape and preview[100, 120]
    assert widget.commit() == [1]
    assert widget.output_layer.data.shape == coins().shape


def test_scaled_translated_layer_maps_clicks_through_world(viewer):
    image = viewer.add_image(coins(), scale=(2.0, 0.5), translate=(10.0, 20.0), name="scaled")
    widget = open_widget(viewer, disc_model())
    widget.compute_embedding(wait=True)
    add_point(widget, (10 + 2 * 80, 20 + 0.5 * 200))  # world position of pixel (80, 200)
    mask = widget.selected.mask
    rows, cols = np.nonzero(mask)
    assert mask[80, 200]
    assert abs(rows.mean() - 80) < 3 and abs(cols.mean() - 200) < 3
    assert widget.commit() == [1]
    out = widget.output_layer
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    assert out.data[80, 200] == 1


def test_multichannel_view_from_chosen_channels(viewer):
    data = np.stack([coins(), np.zeros_like(coins()), coins()[:, ::-1]])  # (C, Y, X)
    viewer.add_image(data, name="channels")
    widget = open_widget(viewer, disc_model())
    widget.channel_axis_spin.setValue(0)
    widget.channels_edit.setText("2")
    widget.channels_edit.editingFinished.emit()
    view = widget.view_reader()(widget.current_view())[0]
    np.testing.assert_array_equal(view, data[2])
    widget.channels_edit.setText("0,1,2")
    widget.channels_edit.editingFinished.emit()
    view = widget.view_reader()(widget.current_view())[0]
    assert view.shape == (*coins().shape, 3)
    assert widget.compute_embedding(wait=True)
    embedded = len(widget.cache)  # the view's four tiles (303 x 384, 256 px input)
    assert embedded == len(widget.session.view_tiles()) == 4
    viewer.dims.set_current_step(0, 0)  # the channel slider: same view, cached embeddings
    assert not widget.busy and len(widget.cache) == embedded
    add_point(widget, (0, 100, 120))
    assert widget.commit() == [1]
    assert widget.output_layer.data[0, 100, 120] == 1  # at the slider's channel position


def slow_model(seconds_per_block=0.15):
    model = disc_model()
    for block in model.image_encoder.blocks:
        original = block.forward

        def forward(x, original=original):
            time.sleep(seconds_per_block)
            return original(x)

        block.forward = forward
    return model


def test_delete_image_layer_while_encoding(viewer, qtbot):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, slow_model())
    add_point(widget, (100, 100))
    assert widget.busy
    viewer.layers.remove("coins")
    widget.wait(timeout=30)
    assert widget.candidates == [] and len(widget.cache) == 0
    assert "image" in widget.status_label.text().lower()
    assert not widget.commit()  # nothing to commit, no exception


def test_delete_points_layer_while_encoding(viewer):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, slow_model())
    add_point(widget, (100, 100))
    assert widget.busy
    viewer.layers.remove(POINTS_NAME)
    widget.wait(timeout=30)
    # the embedding is kept, the prompt layer is back, empty
    assert len(widget.cache) == 1
    assert POINTS_NAME in viewer.layers and len(viewer.layers[POINTS_NAME].data) == 0
    assert widget.candidates == []
    add_point(widget, (100, 100))
    assert widget.selected is not None


def test_cancel_stops_encoding(viewer):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, slow_model(0.3))
    widget.compute_embedding(wait=False)
    assert widget.busy
    widget.cancel()
    start = time.perf_counter()
    widget.wait(timeout=30)
    assert time.perf_counter() - start < 1.0  # stopped between blocks
    assert len(widget.cache) == 0 and "cancel" in widget.status_label.text().lower()
