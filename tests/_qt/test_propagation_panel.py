"""The widget's Propagate / Divide: a click carried through a stack in a worker, shown in
its own layer, corrected on another slice, committed with one id as one undo step, and a
time-lapse division recorded in the output layer's features and a CSV."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import load_model
from napari_sam._qt.keys import KEYS
from napari_sam._qt.propagation_panel import PROPAGATION_LAYER
from tests._qt.helpers import open_widget
from tests.stand_ins import ellipsoid_stack
from tests.volume.test_propagation import dividing_movie, iou


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny_cells", device="cpu")


def click(viewer, widget, index, point):
    viewer.dims.set_current_step(0, index)
    assert widget.compute_embedding(wait=True)
    widget.points_layer.add([[index, *point]])


def test_propagate_correct_commit_and_undo_in_one_step(make_napari_viewer, bundled):
    volume, truth = ellipsoid_stack(radii=(15, 20, 16))
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="stack", scale=(3.0, 1.0, 1.0))  # anisotropic
    widget = open_widget(viewer, bundled)
    assert KEYS["J"][0] == "propagate" and "J" in widget.keys.bound
    click(viewer, widget, 20, (64, 64))
    assert widget.propagation.axis == 0
    (obj,) = widget.propagate(wait=True)
    assert len(widget.points_layer.data) == 0  # the prompt was used
    shown = viewer.layers[PROPAGATION_LAYER].data
    assert np.array_equal(shown > 0, obj.mask) and iou(obj.mask, truth) > 0.7
    assert "Propagated 1 object" in widget.status_label.text()

    # Correct on slice 30: a point there refines the propagated mask, J applies it.
    click(viewer, widget, 30, (64, 64))
    assert widget.commit() == []  # refused: the correction is not applied yet
    assert "Press J" in widget.status_label.text()
    (corrected,) = widget.propagate(wait=True)
    assert corrected.prompted == (20, 30)

    assert widget.output_layer is None  # the refused commit made no layer
    assert widget.commit() == [1]
    output = widget.output_layer.data
    assert np.array_equal(output == 1, corrected.mask) and set(np.unique(output)) == {0, 1}
    assert not viewer.layers[PROPAGATION_LAYER].visible and widget.session.propagation is None
    assert not viewer.layers[PROPAGATION_LAYER].data.any()
    widget.output_layer.undo()  # one step takes the whole 3D object back
    assert not widget.output_layer.data.any()


def test_clear_drops_the_propagation_without_writing(make_napari_viewer, bundled):
    volume, _ = ellipsoid_stack(shape=(12, 96, 96), radii=(5, 16, 16))
    viewer = make_napari_viewer()
    viewer.add_image(volume)
    widget = open_widget(viewer, bundled)
    click(viewer, widget, 6, (48, 48))
    widget.propagate(wait=True)
    widget.clear()  # with no prompts: the propagation goes
    assert widget.session.propagation is None and widget.output_layer is None
    layer = viewer.layers[PROPAGATION_LAYER]
    assert not layer.visible and not layer.data.any()
    click(viewer, widget, 6, (48, 48))
    widget.propagate(wait=True)  # the layer is used again
    assert viewer.layers[PROPAGATION_LAYER] is layer and layer.visible and layer.data.any()
    viewer.dims.ndisplay = 3  # looking at it in 3D: a status, not a warning
    widget.update_prediction()
    assert "2D" in widget.status_label.text()


def test_track_divide_commit_lineage_and_csv(make_napari_viewer, bundled, tmp_path):
    movie, _truth = dividing_movie()
    viewer = make_napari_viewer()
    viewer.add_image(movie, name="movie")
    viewer.dims.axis_labels = ("t", "y", "x")
    widget = open_widget(viewer, bundled)
    click(viewer, widget, 0, (64, 64))
    assert widget.propagation.axis_combo.currentText() == "t (axis 0)"
    widget.propagate(wait=True)
    click(viewer, widget, 10, (48, 64))
    widget.points_layer.add([[10, 80, 64]])
    objects = widget.divide(wait=True)
    assert [o.parent for o in objects] == [None, 0, 0]
    assert widget.commit() == [1, 2, 3]
    features = widget.output_layer.features
    assert features["index"].tolist() == [1, 2, 3] and features["parent"].tolist() == [0, 1, 1]
    assert features["last_frame"].tolist()[0] == 9
    path = tmp_path / "lineage.csv"
    widget.propagation.export_lineage(path)
    assert path.read_text().splitlines()[1:] == [
        f"{r.index},{r.parent},{r.first_frame},{r.last_frame}" for r in features.itertuples()
    ]


def test_cancel_keeps_what_was_done_and_j_goes_on(make_napari_viewer, bundled):
    volume, _ = ellipsoid_stack(radii=(15, 20, 16))
    viewer = make_napari_viewer()
    viewer.add_image(volume)
    widget = open_widget(viewer, bundled)
    click(viewer, widget, 20, (64, 64))
    widget.wait()
    # Cancelled after the third propagated slice: the progress callback stops it.
    done = []
    original = widget.session.plan_propagation

    def plan(axis=None, settings=None):
        engine = original(axis, settings)
        run = engine.run

        def cancel_soon(cancelled=None, progress=None):
            def report(count, total):
                done.append(count)
                if len(done) == 3:  # once
                    widget.propagation.cancel()
                progress(count, total)

            return run(cancelled, report)

        engine.run = cancel_soon
        return engine

    widget.session.plan_propagation = plan
    assert widget.propagate(wait=True) is None
    shown = viewer.layers[PROPAGATION_LAYER].data
    assert 0 < shown.any(axis=(1, 2)).sum() < 8  # the part done is shown
    assert "cancelled" in widget.status_label.text()
    widget.session.plan_propagation = original
    result = widget.propagate(wait=True)  # J with no prompts: goes on
    assert result is not None, widget.status_label.text()
    (obj,) = result
    assert len(obj.slices) > 20
    assert viewer.layers[PROPAGATION_LAYER].data.any(axis=(1, 2)).sum() == len(obj.slices)


def test_closing_mid_propagation_and_switching_images(make_napari_viewer, bundled, qtbot):
    volume, _ = ellipsoid_stack(radii=(15, 20, 16))
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="first")
    widget = open_widget(viewer, bundled)
    click(viewer, widget, 20, (64, 64))
    widget.propagate(wait=True)
    other = viewer.add_image(volume[:, ::-1].copy(), name="second")
    widget.image_layer = other
    widget.update_prediction()
    assert widget.commit() == []  # refused: made on the other image
    assert "another image" in widget.status_label.text()
    assert [layer.name for layer in viewer.layers if "labels" in layer.name] == []
    # Closing the widget while a propagation runs: no callback touches it afterwards.
    widget.image_layer = viewer.layers["first"]
    click(viewer, widget, 10, (64, 64))
    widget.propagate(wait=False)
    job = widget.propagation.job
    viewer.close()  # deletes the widget's Qt objects; its job's callbacks must not use them
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    assert widget.closed


def test_a_click_decoded_in_a_tile_propagates_from_the_whole_view(make_napari_viewer, bundled):
    """The view (500 px) is decoded in tiles; propagation works on whole views: J first
    embeds the whole view in the worker (press again when done), then propagates the
    same reading decoded there, as with 'in tiles' unticked."""
    from tests.interactive.test_tiling import sphere_volume

    viewer = make_napari_viewer()
    viewer.add_image(sphere_volume(), name="ball")
    widget = open_widget(viewer, bundled)
    click(viewer, widget, 6, (300, 200))
    assert widget.prepare_prompts(wait=True)
    widget.select("part")
    assert widget.selected.tile is not None
    assert widget.propagate(wait=False) is None  # the whole view is being embedded
    assert "press J again" in widget.status_label.text()
    widget.wait(timeout=60)
    widget.select("part")
    shown = widget.selected.mask
    (obj,) = widget.propagate(wait=True)
    assert len(obj.slices) > 1
    started = obj.planes[6]
    agreement = (shown & started).sum() / (shown | started).sum()
    assert widget.session.seed_agreement == pytest.approx(agreement)
    said = "decoded again on the whole view" in widget.status_label.text()
    assert said == (agreement < 0.8)
    widget.tiled_check.setChecked(False)
    widget.propagation.clear()
    click(viewer, widget, 6, (300, 200))
    assert widget.prepare_prompts(wait=True)
    widget.select("part")
    (untiled,) = widget.propagate(wait=True)
    assert untiled.slices == obj.slices
    np.testing.assert_array_equal(untiled.mask, obj.mask)


def test_a_propagation_is_not_squashed_into_another_image_s_2d_labels(make_napari_viewer):
    """From a new user's break test: with a 2D image's labels as the output, K after J
    on a stack wrote every slice of the object into that 2D layer."""
    from tests.stand_ins import coins, disc_model

    viewer = make_napari_viewer()
    viewer.add_image(coins(), name="flat")
    widget = open_widget(viewer, disc_model())
    widget.points_layer.add([[100, 100]])
    assert widget.prepare_prompts(wait=True)
    assert widget.commit() == [1]
    flat_labels = widget.output_layer
    before = flat_labels.data.copy()
    volume, _ = ellipsoid_stack(radii=(15, 20, 16))
    viewer.add_image(volume, name="stack")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("stack"))
    assert widget.output_layer is None  # each image has its own output...
    # ...unless the user picks another image's labels by hand.
    widget.output_combo.setCurrentIndex(widget.output_combo.findText("flat labels"))
    click(viewer, widget, 20, (64, 64))
    assert widget.propagate(wait=True)
    assert widget.output_layer is flat_labels and widget.commit() == []
    assert "no axis for the image's axis 0" in widget.status_label.text()
    np.testing.assert_array_equal(flat_labels.data, before)
    assert widget.session.propagation is not None  # kept: commit it elsewhere


def test_the_axis_choice_is_not_carried_to_another_image(make_napari_viewer):
    """From a new user's break test: after propagating along z (axis 0) of a stack,
    the widget kept "axis 0" for a (t, z, y, x) image, where it is t."""
    from tests.stand_ins import disc_model

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((12, 64, 64), np.uint8), name="stack")
    viewer.add_image(np.zeros((3, 8, 64, 64), np.uint8), name="tz")
    widget = open_widget(viewer, disc_model())
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("stack"))
    widget.compute_embedding(wait=True)
    assert widget.propagation.axis == 0
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("tz"))
    widget.compute_embedding(wait=True)
    assert widget.propagation.axis == 1  # z, next to the displayed axes
    widget.propagation.axis_combo.setCurrentIndex(0)  # the user's choice: t
    widget.compute_embedding(wait=True)
    assert widget.propagation.axis == 0  # kept while on this image
