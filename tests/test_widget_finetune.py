"""The "Fine-tune SAM" widget in a real napari viewer, with the tiny model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_sam._finetune_widget import ALL_SLICES, FULL, MAIN_WIDGET_MODEL, main_widgets
from napari_sam.training import finetuning
from napari_sam.training.finetuning import finetuned_models, save_finetuned
from napari_sam.zoo import load_model
from test_training import blobs
from widget_helpers import open_widget

FINETUNE = ("napari-sam-labeler", "Fine-tune SAM")


@pytest.fixture(autouse=True)
def fresh_finetuned_list(monkeypatch):
    monkeypatch.setattr(finetuning, "_finetuned", {})


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    sample = blobs(np.random.default_rng(0))
    viewer.add_image(sample.image, name="blobs")
    viewer.add_labels(sample.levels[0], name="annotations")
    return viewer


def open_finetune(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(*FINETUNE)
    return widget


def combo_data(combo) -> list:
    return [combo.itemData(i) for i in range(combo.count())]


def test_finetunes_the_main_widgets_model_and_offers_the_result_there(
    viewer, tiny_model, tmp_path
):
    main = open_widget(viewer, tiny_model)
    original = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    widget = open_finetune(viewer)
    assert type(widget).__name__ == "FinetuneWidget"
    assert main_widgets(viewer) == [main]
    assert widget.image_combo.currentText() == "blobs"
    assert widget.labels_combo.currentText() == "annotations"
    widget.add_pair()
    assert widget.pair_list.count() == 1
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(MAIN_WIDGET_MODEL))
    widget.steps_spin.setValue(3)
    out = tmp_path / "blobs-tuned.pt"
    widget.out_edit.setText(str(out))

    result = widget.start(wait=True, timeout=300)
    assert result is not None and not result.cancelled and result.steps_done == 3
    assert result.path == out and out.is_file()
    assert np.isfinite(result.before_iou) and np.isfinite(result.after_iou)
    assert result.held_out_objects >= 1
    assert "before" in widget.status_label.text() and "after" in widget.status_label.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()

    # The main widget's model was copied, not trained in place.
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert main.model is tiny_model

    # The checkpoint is a model choice of the main widget, chosen, and loads from there.
    assert finetuned_models() == {"blobs-tuned": out.resolve()}
    assert str(out.resolve()) in combo_data(main.model_combo)
    assert main.model_combo.currentData() == str(out.resolve())
    assert "blobs-tuned (fine-tuned)" in main.model_combo.currentText()
    main.load_button.click()
    main.wait(timeout=60)
    assert main.model is not tiny_model and main.model.config == tiny_model.config
    tuned = load_model(out, device="cpu", dtype="float32")
    for key, value in tuned.state_dict().items():
        assert torch.equal(main.model.state_dict()[key].float(), value), key
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all(not k.startswith("image_encoder.") for k in changed)  # decoder only

    # A main widget opened later lists it too, as does the fine-tune widget itself.
    assert str(out.resolve()) in combo_data(open_widget(viewer, tiny_model).model_combo)
    assert str(out.resolve()) in combo_data(widget.model_combo)


def test_starts_from_a_checkpoint_file_and_trains_all_slices(viewer, tiny_model, tmp_path):
    base = save_finetuned(tiny_model, tmp_path / "base.pt")
    stack = np.stack([blobs(np.random.default_rng(i)) for i in (1, 2, 3)])
    images = np.stack([item.image for item in stack])
    labels = np.stack([item.levels[0] for item in stack])
    labels[1] = 0  # an unannotated slice
    viewer.layers.clear()
    image_layer = viewer.add_image(images, name="stack")
    labels_layer = viewer.add_labels(labels, name="stack labels")
    viewer.dims.set_current_step(0, 2)
    widget = open_finetune(viewer)

    widget.slices_combo.setCurrentText(ALL_SLICES)
    widget.add_pair()
    assert len(widget.training_data()) == 2  # slices 0 and 2
    widget.pairs.clear()
    current = widget.add_pair(image_layer, labels_layer, all_slices=False)
    assert current.slice_index == {0: 2}
    (item,) = widget.training_data()
    assert np.array_equal(item.image, images[2]) and np.array_equal(item.levels[0], labels[2])

    widget.pairs.clear()
    widget.add_pair(image_layer, labels_layer, all_slices=True)
    finetuning.register_finetuned(base)
    widget.fill_model_choices()
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(base.resolve())))
    widget.mode_combo.setCurrentText(FULL)
    widget.steps_spin.setValue(2)
    widget.out_edit.setText(str(tmp_path / "full.pt"))
    result = widget.start(wait=True, timeout=300)
    assert result.steps_done == 2 and result.path.is_file()
    tuned = load_model(result.path, device="cpu", dtype="float32")
    encoder_changed = [
        k
        for k, v in tuned.image_encoder.state_dict().items()
        if not torch.equal(v, tiny_model.image_encoder.state_dict()[k])
    ]
    assert encoder_changed  # full fine-tuning
    stored = torch.load(result.path, weights_only=True)[finetuning.METADATA_KEY]
    assert stored["base_model"] == "base" and stored["decoder_only"] is False


def test_cancel_stops_between_steps_and_saves_nothing(viewer, tiny_model, tmp_path, qtbot):
    widget = open_finetune(viewer)
    base = save_finetuned(tiny_model, tmp_path / "base.pt")
    finetuning.register_finetuned(base)
    widget.fill_model_choices()
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(str(base.resolve())))
    widget.steps_spin.setValue(10_000)
    out = tmp_path / "cancelled.pt"
    widget.out_edit.setText(str(out))
    widget.start(wait=False)
    assert widget.busy and widget.cancel_button.isEnabled()
    pbar = widget._progress
    assert pbar is not None and pbar.total == 10_000  # in the activity dock
    qtbot.waitUntil(lambda: pbar.n >= 2, timeout=120_000)
    started = time.perf_counter()
    qtbot.mouseClick(widget.cancel_button, Qt.MouseButton.LeftButton)
    widget.wait(timeout=60)
    assert time.perf_counter() - started < 30
    result = widget.result
    assert result.cancelled and 2 <= result.steps_done < 10_000
    assert result.path is None and not out.exists()
    assert "Cancelled after" in widget.status_label.text()
    assert finetuned_models() == {"base": base.resolve()}


def test_reports_what_is_missing(viewer):
    widget = open_finetune(viewer)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData(MAIN_WIDGET_MODEL))
    assert widget.start(wait=True) is None
    assert "No model is loaded" in widget.status_label.text()
    viewer.layers["annotations"].data = np.zeros_like(viewer.layers["annotations"].data)
    widget.model_combo.setCurrentIndex(1)
    assert widget.start(wait=True) is None
    assert "empty" in widget.status_label.text()
    assert not widget.busy
