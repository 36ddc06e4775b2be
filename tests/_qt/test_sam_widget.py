"""The "Segment Anything" widget in a real napari viewer (tiny random-weight model).

The tiny model's masks mean nothing, but they differ from prompt to prompt, which is
what these tests check: the flow from a click to a committed label.
"""

import numpy as np
import pytest

from napari_sam._qt._layers import POINTS_NAME
from napari_sam._qt.keys import KEYS
from tests._qt.helpers import add_point, open_widget, shown_preview
from tests.stand_ins import coins, disc_model


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, disc_model())
    assert widget.compute_embedding(wait=True)
    return widget


def preview_of(widget):
    return shown_preview(widget)


def test_widget_opens_from_manifest_with_prompt_layers(viewer, tiny_model):
    viewer.add_image(coins(), name="coins")
    widget = open_widget(viewer, tiny_model)
    assert type(widget).__name__ == "SamWidget"
    assert widget.points_layer.name == POINTS_NAME
    assert widget.boxes_layer.ndim == 2
    assert widget.image_combo.currentText() == "coins"
    assert widget.model_combo.count() > 1  # zoo names plus "local file..."
    assert "auto" in [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())]


def test_positive_point_gives_preview_then_negative_changes_it(widget):
    add_point(widget, (40, 40))
    assert widget.points_layer.features["polarity"].tolist() == ["positive"]
    first = preview_of(widget).copy()
    assert first[40, 40] and 0 < first.sum() < first.size / 4  # a mask around the click
    assert [c.name for c in widget.candidates] == ["whole", "part", "subpart"]
    add_point(widget, (40, 55), negative=True)
    assert widget.points_layer.features["polarity"].tolist() == ["positive", "negative"]
    # two prompts: the single, unambiguous mask, with a hole at the negative point
    assert [c.name for c in widget.candidates] == ["mask"]
    second = preview_of(widget)
    assert first[40, 55] and not second[40, 55] and second[40, 25]
    colours = widget.points_layer.face_color
    assert not np.allclose(colours[0], colours[1])  # two clearly different colours


def test_picker_switches_between_three_masks(widget):
    add_point(widget, (50, 50))
    masks = {}
    for name in ("whole", "part", "subpart"):
        chosen = widget.select(name)
        assert chosen.name == name
        np.testing.assert_array_equal(preview_of(widget) > 0, chosen.mask)
        masks[name] = chosen.mask.copy()
    areas = [masks[n].sum() for n in ("whole", "part", "subpart")]
    assert areas == sorted(areas, reverse=True)
    assert not np.array_equal(masks["whole"], masks["part"])
    assert not np.array_equal(masks["part"], masks["subpart"])
    # preselection: the highest predicted IoU ("part" for the disc decoder)
    widget.clear()
    add_point(widget, (50, 50))
    assert widget.selected.name == "part" == max(widget.candidates, key=lambda c: c.iou).name
    assert widget.candidate_buttons[1].isChecked()
    assert "0.90" in widget.candidate_buttons[1].text()
    # clicking a picker button selects, and so do the keys
    widget.candidate_buttons[0].click()
    assert widget.selected.name == "whole"
    widget.next_candidate()
    assert widget.selected.name == "part"
    widget.select_subpart()
    np.testing.assert_array_equal(preview_of(widget) > 0, masks["subpart"])


def test_commit_writes_new_id_and_keeps_other_labels(widget, viewer):
    existing = np.zeros(coins().shape, np.int32)
    existing[:100, :100] = 5
    labels = viewer.add_labels(existing.copy(), name="mine")
    widget.output_layer = labels
    add_point(widget, (95, 95))
    mask = widget.select("whole").mask
    assert mask[:100, :100].any() and mask[100:].any()
    ids = widget.commit()
    assert ids == [6]
    np.testing.assert_array_equal(labels.data[:100, :100], 5)  # untouched
    expected = np.where(existing > 0, existing, np.where(mask, 6, 0))
    np.testing.assert_array_equal(labels.data, expected)
    # prompts and preview are cleared after a commit
    assert len(widget.points_layer.data) == 0
    assert not preview_of(widget).any()
    assert widget.candidates == []


def test_commit_overwrite_option(widget, viewer):
    labels = viewer.add_labels(np.full(coins().shape, 3, np.int32), name="full")
    widget.output_layer = labels
    add_point(widget, (150, 190))
    assert widget.commit() == []  # everything is labelled already
    assert (labels.data == 3).all()
    add_point(widget, (150, 190))
    widget.overwrite_check.setChecked(True)
    mask = widget.select("whole").mask
    assert widget.commit() == [4]
    assert (labels.data[mask] == 4).all() and (labels.data[~mask] == 3).all()


def test_commit_makes_output_layer_and_ctrl_z_undoes(widget, viewer):
    add_point(widget, (150, 190))
    mask = widget.selected.mask
    assert widget.commit() == [1]
    out = widget.output_layer
    assert out.data.shape == coins().shape and out.scale.tolist() == [1, 1]
    np.testing.assert_array_equal(out.data > 0, mask)
    add_point(widget, (40, 40))
    second = widget.commit()
    assert second == [2]
    out.undo()  # what Ctrl+Z does on a Labels layer
    np.testing.assert_array_equal(out.data > 0, mask)
    assert out.data.max() == 1
    out.undo()
    assert not out.data.any()
    out.redo()
    np.testing.assert_array_equal(out.data > 0, mask)


def test_clear_drops_prompts_and_preview(widget):
    add_point(widget, (150, 190))
    widget.boxes_layer.add_rectangles(np.array([[100, 150], [200, 250]]))
    assert preview_of(widget).any()
    widget.clear()
    assert len(widget.points_layer.data) == 0 and len(widget.boxes_layer.data) == 0
    assert not preview_of(widget).any()
    assert widget.candidates == []


def test_box_prompt(widget):
    widget.boxes_layer.add_rectangles(np.array([[20, 30], [120, 160]]))
    assert [c.name for c in widget.candidates] == ["mask"]
    # The disc decoder's answer to a box alone is the box itself, up to its low-res grid
    # (one cell = 6 image pixels here).
    mask = preview_of(widget) > 0
    np.testing.assert_array_equal(widget.selected.mask, mask)
    assert mask[28:113, 38:153].all()  # the box shrunk by 8 px
    outside = np.ones_like(mask)
    outside[12:129, 22:169] = False  # the box grown by 8 px
    assert not mask[outside].any()
    assert abs(mask.sum() - 100 * 130) < 0.15 * 100 * 130


def test_one_object_per_box(widget):
    widget.per_box_check.setChecked(True)
    boxes = [np.array([[10, 10], [100, 120]]), np.array([[150, 200], [290, 370]])]
    widget.boxes_layer.add_rectangles(boxes)
    assert [c.name for c in widget.candidates] == ["box 1", "box 2"]
    masks = [c.mask for c in widget.candidates]
    assert masks[0][50, 60] and masks[1][220, 280] and not (masks[0] & masks[1]).any()
    assert set(np.unique(preview_of(widget))) == {0, 1, 2}
    assert widget.commit() == [1, 2]
    out = widget.output_layer.data
    np.testing.assert_array_equal(out, masks[0] * 1 + masks[1] * 2)
    assert len(widget.boxes_layer.data) == 0
    # one undo takes the whole batch back
    widget.output_layer.undo()
    assert not widget.output_layer.data.any()


def test_clicks_decode_in_a_tile_until_in_tiles_is_unticked(widget):
    """coins is 303 x 384 and the model's input 256 px: four tiles at full resolution."""
    assert widget.tiled_check.isChecked() and widget.session.tiled
    add_point(widget, (280, 20))
    tiled = widget.selected
    assert tiled.tile == (47, 0, 303, 256)
    assert "tile of rows 47-302, columns 0-255" in widget.status_label.text()
    assert not preview_of(widget)[:, 256:].any()  # nothing outside its tile
    widget.tiled_check.setChecked(False)  # the same prompt, on the whole view resized
    assert widget.prepare_prompts(wait=True)  # after the whole view's embedding
    assert widget.session.tiled is False and widget.candidates
    assert widget.selected.tile is None and "tile" not in widget.status_label.text()
    whole_view = widget.selected.mask
    assert not np.array_equal(whole_view, tiled.mask)
    (new_id,) = widget.commit()
    np.testing.assert_array_equal(widget.output_layer.data == new_id, whole_view)


def test_moving_and_deleting_points_rerun_decoder(widget):
    add_point(widget, (50, 50))
    first = preview_of(widget).copy()
    layer = widget.points_layer
    layer.data = np.array([[150.0, 190.0]])
    moved = preview_of(widget).copy()
    assert not np.array_equal(first, moved)
    layer.selected_data = {0}
    layer.remove_selected()
    assert not preview_of(widget).any() and widget.candidates == []


def test_previous_logits_refine_when_prompts_only_grow(widget, monkeypatch):
    from napari_sam import SamPredictor

    calls = []
    original = SamPredictor.predict

    def spy(self, **kwargs):
        calls.append(kwargs.get("mask_input") is not None)
        return original(self, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict", spy)
    add_point(widget, (50, 50))
    add_point(widget, (150, 190))
    widget.points_layer.data = widget.points_layer.data[::-1].copy()  # moved, not grown
    assert calls == [False, True, False]


def test_keys_are_bound_while_open_and_gone_after_close(viewer, tiny_model):
    from napari.utils.key_bindings import coerce_keybinding

    viewer.add_image(coins())
    before = dict(viewer.keymap)
    widget = open_widget(viewer, tiny_model)
    for key in KEYS:
        assert coerce_keybinding(key) in viewer.keymap
    # the bound keys work: N toggles polarity, Q clears
    viewer.keymap[coerce_keybinding("N")](viewer)
    assert widget.negative
    viewer.window.remove_dock_widget(widget)
    assert dict(viewer.keymap) == before
    # no callbacks left on the layers or the viewer
    points = viewer.layers[POINTS_NAME]
    ours = (widget, widget.prompts, widget.preview)
    assert not [cb for cb in points.mouse_drag_callbacks if getattr(cb, "__self__", 0) in ours]
    emitters = [points.events.data, points.events.feature_defaults,
                viewer.dims.events.current_step, viewer.layers.events.inserted,
                viewer.layers.events.removed]  # fmt: skip
    for emitter in emitters:
        owners = [
            cb[0]() if isinstance(cb, tuple) else getattr(cb, "__self__", None)
            for cb in emitter.callbacks
        ]
        assert not [owner for owner in owners if owner in ours], emitter
    viewer.layers.remove(points)  # no recreation after close
    assert POINTS_NAME not in [layer.name for layer in viewer.layers]


def test_keys_do_not_clash_with_napari_layer_bindings():
    from app_model.types import KeyBinding
    from napari.utils.shortcuts import default_shortcuts

    taken = {str(kb) for bindings in default_shortcuts.values() for kb in bindings}
    ours = {str(KeyBinding.from_str(key)) for key in KEYS}
    assert not ours & taken


def press(viewer, qtbot, key, modifier=None):
    """A real key press on the canvas, dispatched by napari's own key handling."""
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key, modifier or Qt.KeyboardModifier.NoModifier)


def test_keys_commit_and_ctrl_z_undoes_through_qt_events(widget, viewer, qtbot):
    from qtpy.QtCore import Qt

    add_point(widget, (40, 40))
    assert widget.candidates
    press(viewer, qtbot, Qt.Key.Key_K)  # commit
    out = widget.output_layer
    assert out is not None and out.data[40, 40] == 1
    assert len(widget.points_layer.data) == 0  # prompts cleared after the commit
    viewer.layers.selection.active = out
    press(viewer, qtbot, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert out.data.max() == 0  # Ctrl+Z took the commit back
    add_point(widget, (60, 60))
    press(viewer, qtbot, Qt.Key.Key_Q)  # clear
    assert len(widget.points_layer.data) == 0 and not widget.candidates


def test_n_key_and_ctrl_click_make_negative_points(widget, viewer, qtbot):
    from qtpy.QtCore import QPoint, Qt

    points = widget.points_layer
    viewer.layers.selection.active = points
    points.mode = "add"
    canvas = viewer.window._qt_viewer.canvas.native
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseClick(
        canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, pos=centre
    )
    press(viewer, qtbot, Qt.Key.Key_N)  # toggle: the next plain click is negative
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=centre + QPoint(5, 5))
    press(viewer, qtbot, Qt.Key.Key_N)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=centre + QPoint(9, 9))
    assert points.features["polarity"].tolist() == ["positive", "negative", "negative", "positive"]


def test_the_preview_outline_is_the_mask_edge_two_pixels_wide():
    from scipy.ndimage import binary_erosion

    from napari_sam._qt.preview import outline

    rng = np.random.default_rng(0)
    for _ in range(100):  # ragged masks anywhere, touching the border or not
        mask = np.zeros((40, 50), bool)
        r, c = rng.integers(0, 40), rng.integers(0, 50)
        mask[r : r + rng.integers(1, 40), c : c + rng.integers(1, 50)] = True
        mask &= rng.random(mask.shape) > 0.1
        expected = mask & ~binary_erosion(mask, iterations=2, border_value=0)
        np.testing.assert_array_equal(outline(mask), expected)
