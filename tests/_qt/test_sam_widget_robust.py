"""What users bring to the widget: layers in other frames, pixels edited in place, output
layers that cannot be written, scripting errors, polarity by mouse, a cache of size 0."""

import numpy as np
import pytest

from tests._qt.helpers import add_point, open_widget, shown_preview
from tests.stand_ins import coins, disc_model


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def world_to_data(layer, world):
    return np.asarray(layer.world_to_data(np.asarray(world, float)))


def test_commit_lands_under_the_object_when_output_has_another_frame(viewer):
    image = viewer.add_image(coins(), scale=(0.5, 0.25), translate=(10, 20), name="coins")
    labels = viewer.add_labels(np.zeros(coins().shape, np.int32), name="mine")  # scale 1
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    widget.output_layer = labels
    click = (10 + 0.5 * 150, 20 + 0.25 * 190)  # the world position of image pixel (150, 190)
    add_point(widget, click)
    mask = widget.selected.mask
    assert mask[150, 190]
    assert widget.commit() == [1]
    rows, cols = np.nonzero(labels.data)
    assert len(rows) > 0
    # Every labelled pixel (world = its index, scale 1) lies on the object in the image...
    image_rc = np.floor(world_to_data(image, np.c_[rows, cols]) + 0.5).astype(int)
    assert mask[image_rc[:, 0], image_rc[:, 1]].all()
    # ...and covers its world area (mask pixels are 0.5 x 0.25 world units).
    assert abs(len(rows) - mask.sum() * 0.125) <= 0.1 * mask.sum() * 0.125
    assert labels.data[round(click[0]), round(click[1])] == 1
    assert labels.data[150, 190] == 0  # where the pixel indices alone would have put it


def test_commit_refuses_a_plane_tilted_against_the_output_and_keeps_prompts(viewer):
    stack = np.stack([coins()] * 3)
    viewer.add_image(stack, name="stack")
    tilt = ((np.cos(0.5), -np.sin(0.5), 0), (np.sin(0.5), np.cos(0.5), 0), (0, 0, 1))
    labels = viewer.add_labels(np.zeros(stack.shape, np.int32), rotate=tilt, name="tilted")
    widget = open_widget(viewer, disc_model())
    widget.output_layer = labels
    viewer.dims.set_point(0, 1.0)  # world z = 1 (the tilted layer widens the world's range)
    assert widget.compute_embedding(wait=True)
    layer = widget.points_layer
    layer.add([[1, 150, 190]])  # the points layer shares the image's frame
    assert widget.candidates
    assert widget.commit() == []
    assert not labels.data.any() and len(layer.data) == 1
    assert "not a plane of the labels" in widget.status_label.text()
    assert "'stack'" in widget.status_label.text() and "'tilted'" in widget.status_label.text()


def test_prompt_layer_in_another_frame_is_mapped_through_world(viewer):
    viewer.add_image(coins(), scale=(2.0, 0.5), name="coins")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    points = viewer.add_points(np.zeros((0, 2)), name="my points")  # scale 1
    widget.points_layer = points
    points.add([[2 * 80, 0.5 * 200]])  # world = data for this layer
    assert widget.selected.mask[80, 200]


@pytest.mark.parametrize("refresh", [True, False])
def test_pixels_edited_in_place_are_embedded_again(viewer, refresh):
    from napari_sam.image import to_uint8_rgb
    from napari_sam.interactive import frame_key
    from napari_sam.predictor import embed_image

    image = viewer.add_image(coins().copy(), name="coins")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    session = widget.session
    tile = (0, 0, 256, 256)  # the click below is decoded in this tile of the view

    def embedding():
        return session.embedding_for(frame_key(session.embedding_key(), tile)).features

    first = embedding().clone()
    other = np.ascontiguousarray(coins()[::-1, ::-1])
    image.data[:] = other
    if refresh:
        image.refresh()
    add_point(widget, (100, 100))
    widget.wait(timeout=60)
    assert widget.candidates  # decoded once the new embedding was ready
    assert widget.candidates[0].tile == tile
    used = embedding()
    expected = embed_image(widget.model, to_uint8_rgb(other)[:256, :256]).features
    assert not np.allclose(used.numpy(), first.numpy())
    np.testing.assert_allclose(used.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_current_embedding_is_kept_with_a_cache_of_size_zero(viewer, monkeypatch):
    import napari_sam.predictor as predictor

    calls = []
    original = predictor.embed_image
    monkeypatch.setattr(
        predictor, "embed_image", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    widget.cache.max_bytes = 0
    add_point(widget, (100, 100))
    widget.wait(timeout=60)
    for _ in range(20):  # give a re-embedding loop the chance to show itself
        widget.wait(timeout=5)
    assert widget.candidates and shown_preview(widget)[100, 100]
    assert len(calls) == 1 and len(widget.cache) == 0
    add_point(widget, (40, 40))
    assert len(calls) == 1


def dask_labels(shape):
    import dask.array as da

    return da.zeros(shape, dtype=np.int32, chunks=64)


def read_only_labels(shape):
    data = np.zeros(shape, np.int32)
    data.flags.writeable = False
    return data


@pytest.mark.parametrize("make", [dask_labels, read_only_labels], ids=["dask", "read-only"])
def test_output_that_cannot_be_written_is_refused_before_writing(viewer, make):
    viewer.add_image(coins(), name="coins")
    labels = viewer.add_labels(make(coins().shape), name="lazy")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    widget.output_layer = labels
    add_point(widget, (100, 100))
    assert widget.commit() == []
    message = widget.status_label.text()
    assert "'lazy'" in message and "np.array(layer.data)" in message
    assert len(widget.points_layer.data) == 1 and widget.candidates  # prompts kept
    assert not np.asarray(labels.data).any()


def test_multiscale_output_is_refused(viewer):
    viewer.add_image(coins(), name="coins")
    pyramid = [np.zeros(coins().shape, np.int32), np.zeros((152, 192), np.int32)]
    labels = viewer.add_labels(pyramid, multiscale=True, name="pyramid")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    widget.output_layer = labels
    add_point(widget, (100, 100))
    assert widget.commit() == [] and "multiscale" in widget.status_label.text()
    assert not any(level.any() for level in labels.data)


def test_batch_that_would_run_out_of_ids_writes_nothing(viewer):
    viewer.add_image(coins(), name="coins")
    data = np.zeros(coins().shape, np.uint8)
    data[0, 0] = 253
    labels = viewer.add_labels(data, name="small")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    widget.output_layer = labels
    widget.per_box_check.setChecked(True)
    corners = [(20, 20), (20, 200), (160, 20), (160, 200)]
    widget.boxes_layer.add_rectangles([np.array([[r, c], [r + 80, c + 100]]) for r, c in corners])
    assert len(widget.candidates) == 4
    assert widget.commit() == []
    assert "254 to 257" in widget.status_label.text()
    assert labels.data.max() == 253 and np.count_nonzero(labels.data) == 1
    assert len(widget.boxes_layer.data) == 4  # the prompts stay for another try
    labels.data = labels.data.astype(np.int32)
    assert widget.commit() == [254, 255, 256, 257]


def test_set_model_wait_raises_the_real_error_shortly(viewer):
    from napari_sam.zoo import ModelDownloadError, ModelEntry, register, unregister
    from tests.reference import TINY

    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    entry = ModelEntry("unreachable", TINY, "http://127.0.0.1:9/model.pt",
                       "sha256:" + "0" * 64, None, "MIT", "test")  # fmt: skip
    register(entry)
    try:
        with pytest.raises(ModelDownloadError, match="unreachable") as info:
            widget.set_model("unreachable", wait=True)
    finally:
        unregister("unreachable")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert widget.model is not None  # the model in use stays


def test_plain_ctrl_plain_plain_clicks_give_positive_negative_positive_positive(viewer, qtbot):
    from qtpy.QtCore import QPoint, Qt

    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    points = widget.points_layer
    viewer.layers.selection.active = points
    points.mode = "add"
    canvas = viewer.window._qt_viewer.canvas.native
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    control = Qt.KeyboardModifier.ControlModifier
    for i, modifier in enumerate([None, control, None, None]):
        kwargs = {"pos": centre + QPoint(6 * i, 6 * i)}
        if modifier is not None:
            kwargs["modifier"] = modifier
        qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, **kwargs)
        qtbot.wait(10)
    assert points.features["polarity"].tolist() == ["positive", "negative", "positive", "positive"]
    assert not widget.negative_check.isChecked()
    points.add(points.data[-1] + 3)  # a script's point after a Ctrl-click: positive too
    assert points.features["polarity"].tolist()[-1] == "positive"


def test_widget_from_the_plugins_menu_loads_its_model_and_answers_the_first_click(
    viewer, qtbot
):
    viewer.add_image(coins(), name="coins")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler", "Segment Anything")
    assert widget.model_combo.currentData() == "tiny_cells"  # the test cache is empty
    widget.points_layer.add([[150, 190]])  # clicked before the model is ready
    qtbot.waitUntil(lambda: len(widget.candidates) == 3, timeout=120_000)
    assert widget.model is not None


def test_a_model_set_by_script_is_not_orphaned_by_the_default_load(viewer, monkeypatch):
    # Bug (CI, README script): napari's activity dock can process events while a progress
    # bar is made; the deferred default load then started inside set_model's load, which
    # returned with no model and "There are no candidates" followed.
    import napari.utils
    from qtpy.QtWidgets import QApplication

    from napari_sam import zoo
    from napari_sam._qt.sam_widget import SamWidget

    real = napari.utils.cancelable_progress

    def progress_processing_events(*args, **kwargs):
        QApplication.processEvents()
        return real(*args, **kwargs)

    monkeypatch.setattr(napari.utils, "cancelable_progress", progress_processing_events)
    loads = []
    real_load = zoo.load_model

    def counted_load(name, **kwargs):
        loads.append(name)
        return real_load(name, **kwargs)

    monkeypatch.setattr(zoo, "load_model", counted_load)
    viewer.add_image(coins(), name="coins")
    widget = SamWidget(viewer)  # its default load is still pending
    model = widget.set_model("tiny_cells", wait=True)
    assert model is not None and widget.model is model
    widget.wait(timeout=60)
    assert widget.model is model and loads == ["tiny_cells"]  # one request, one load


def test_lazy_image_planes_are_read_in_the_worker_and_remembered(viewer, qtbot):
    from tests._qt.test_everything_panel import SlowPlanes

    planes = SlowPlanes(np.stack([coins()] * 3))
    viewer.add_image(planes, name="lazy")
    widget = open_widget(viewer, disc_model())
    viewer.dims.set_current_step(0, 1)
    widget.points_layer.add([[1, 100, 100]])
    qtbot.waitUntil(lambda: len(widget.candidates) == 3, timeout=60_000)
    assert planes.reads == [False]  # one read, in the worker
    widget.points_layer.add([[1, 150, 190]])  # the next prompt: no read at all
    assert widget.candidates and planes.reads == [False]
    planes._data[1] = coins()[::-1]  # changed on disk, and napari told (refresh)
    viewer.layers["lazy"].refresh()
    widget.points_layer.add([[1, 40, 40]])
    # The decode after the embedding is scheduled (QTimer), so wait for it too: testing
    # `candidates` right when the worker ends failed once in a batch run.
    qtbot.waitUntil(
        lambda: len(widget.cache) == 2 and not widget.busy and bool(widget.candidates),
        timeout=60_000,
    )  # decoded on the changed plane's own embedding
    assert len(planes.reads) >= 2 and not any(planes.reads)  # never in the GUI thread


def test_prompts_stay_with_their_image_when_another_of_other_ndim_becomes_active(viewer):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    add_point(widget, (150, 190))
    flat_points = widget.points_layer
    stack = viewer.add_image(np.stack([coins()] * 3), name="stack")  # now the active image
    assert widget.image_layer == stack
    assert widget.points_layer.ndim == 3 and len(widget.points_layer.data) == 0
    assert len(flat_points.data) == 1 and flat_points in viewer.layers  # kept, unused
    assert widget.candidates == [] and widget.commit() == []  # nothing clicked on the stack
    assert widget.output_layer is None
    viewer.layers.selection.active = viewer.layers["coins"]
    assert widget.points_layer == flat_points  # back on the image: its prompt again
    widget.wait_for(lambda: bool(widget.candidates), timeout=60)


def test_each_image_keeps_its_own_output_layer(viewer):
    """From a break test: the labels layer made for image A stayed the output after
    switching to image B, so B's objects went into A's labels (or were refused when
    outside them). Each image now has its own: B's first commit makes "B labels", and
    A's layer is its output again when A is chosen again."""
    a = viewer.add_image(coins(), name="A")
    widget = open_widget(viewer, disc_model())
    add_point(widget, (150, 190))
    widget.wait_for(lambda: bool(widget.candidates), timeout=60)
    assert widget.commit()
    a_labels = widget.output_layer
    assert a_labels.name == "A labels"
    b = viewer.add_image(coins()[:200, :300], name="B")  # now the active image
    assert widget.image_layer == b and widget.output_layer is None
    add_point(widget, (100, 150))
    widget.wait_for(lambda: bool(widget.candidates), timeout=60)
    assert widget.commit()
    b_labels = widget.output_layer
    assert b_labels.name == "B labels" and b_labels.data.shape == (200, 300)
    assert np.unique(a_labels.data).tolist() == [0, 1]  # A's labels untouched
    viewer.layers.selection.active = a
    assert widget.output_layer == a_labels
    viewer.layers.selection.active = b
    assert widget.output_layer == b_labels
    viewer.layers.remove(b_labels)  # gone: B's next commit makes a new one
    viewer.layers.selection.active = a
    viewer.layers.selection.active = b
    assert widget.output_layer is None


def test_segment_everything_ending_after_a_switch_gives_its_result_to_its_own_image(viewer):
    """From a break test: switching to image B while Segment everything ran on A made
    "A everything" B's output, so B's commits went into A's result."""
    a = viewer.add_image(coins(), name="A")
    widget = open_widget(viewer, disc_model())
    widget.segment_everything(wait=False)  # its end is delivered by the event loop...
    b = viewer.add_image(coins()[:200, :300], name="B")  # ...so this switch comes first
    assert widget.image_layer == b
    widget.wait_for(lambda: not widget.everything.busy, timeout=120)
    result = viewer.layers["A everything"]
    assert widget.output_layer is None  # B's first commit will make "B labels"
    viewer.layers.selection.active = a
    assert widget.output_layer == result


def test_the_layer_choices_show_a_renamed_layer_s_new_name(viewer):
    """From a break test: after renaming, the combos kept the old names until the next
    switch, though K writes into the renamed layer."""
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    add_point(widget, (150, 190))
    widget.wait_for(lambda: bool(widget.candidates), timeout=60)
    assert widget.commit()
    viewer.layers["coins"].name = "renamed"
    widget.output_layer.name = "my labels"
    assert widget.image_combo.currentText() == "renamed"
    assert widget.output_combo.currentText() == "my labels"

def test_empty_prompt_layers_take_the_frame_of_the_image_selected(viewer):
    """From a new user's break test: after selecting an unscaled image, the points layer
    kept the first image's scale and translation, so points added in data coordinates
    (the image's pixels, as the README says) landed elsewhere."""
    viewer.add_image(coins(), name="scaled", scale=(0.5, 2), translate=(10, -30))
    widget = open_widget(viewer, disc_model())
    np.testing.assert_allclose(widget.points_layer.scale, (0.5, 2))
    plain = viewer.add_image(coins()[::-1], name="plain")  # now the active image
    assert widget.image_layer == plain
    for layer in (widget.points_layer, widget.boxes_layer):
        np.testing.assert_allclose(layer.scale, (1, 1))
        np.testing.assert_allclose(layer.translate, (0, 0))
    widget.points_layer.add([[150, 190]])
    assert widget.prepare_prompts(wait=True)
    assert widget.selected.mask[150, 190]  # the disc decoder: a disc around the click
    viewer.layers.selection.active = viewer.layers["scaled"]  # prompts stay where they are
    np.testing.assert_allclose(widget.points_layer.scale, (1, 1))


def test_a_reopened_widget_uses_the_sam_layers_there_are(viewer):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    add_point(widget, (150, 190))
    names = [layer.name for layer in viewer.layers]
    viewer.window.remove_dock_widget(widget)
    again = open_widget(viewer, disc_model())
    assert [layer.name for layer in viewer.layers] == names  # no "SAM points [1]"
    assert len(again.points_layer.data) == 1
    again.wait_for(lambda: bool(again.candidates), timeout=60)  # embedded, then decoded


def test_the_status_stops_naming_a_candidate_once_there_is_none(viewer):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    add_point(widget, (150, 190))
    assert widget.status_label.text().startswith("part:")
    widget.points_layer.selected_data = {0}
    widget.points_layer.remove_selected()
    assert widget.candidates == [] and not widget.status_label.text().startswith("part:")
