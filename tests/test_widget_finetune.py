"""The "Fine-tune SAM" widget in a real napari viewer, with the tiny and bundled models."""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_sam._qt.finetune_widget import ALL_SLICES, FULL, MAIN_WIDGET_MODEL, main_widgets
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
    viewer, tiny_model, tmp_path, monkeypatch
):
    # Held-out scores that rise at every check, so that the last weights are the best
    # (the random tiny model clicks nothing right in 3 steps); see test_finetune.py for
    # the real scores.
    rising = itertools.count()
    monkeypatch.setattr(finetuning.HeldOutScore, "__call__", lambda self: 0.1 * next(rising))
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
    assert result.before_iou == 0.0 and result.after_iou == pytest.approx(0.3)
    assert result.held_out_objects >= 1 and result.improved and result.best_step == 3
    status = widget.status_label.text()
    assert "0.000 before, 0.300 after" in status and "from step 3 of 3" in status
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
    widget.holdout_spin.setValue(0)  # nothing held out: the trained weights are kept
    widget.out_edit.setText(str(tmp_path / "full.pt"))
    result = widget.start(wait=True, timeout=300)
    assert result.steps_done == 2 and result.path.is_file() and result.improved is None
    assert "nothing could be checked" in widget.status_label.text()
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


def test_says_when_fine_tuning_did_not_help_and_saves_the_starting_model(
    viewer, tmp_path, monkeypatch
):
    """A run that only makes the model worse (far too high a learning rate) keeps the
    starting weights, says so in the status and a warning notification, and shows the
    held-out IoU in the status as training goes."""
    from napari_sam._qt import finetune_widget as _finetune_widget
    from napari_sam.training.synthetic import generate

    sample = generate(np.random.default_rng(0), (128, 128))
    viewer.layers.clear()
    viewer.add_image(sample.image, name="cells")
    viewer.add_labels(sample.cells, name="cell labels")
    quick = finetuning.default_config

    def too_fast(steps, decoder_only, seed=0):
        config = quick(steps, decoder_only, seed)
        return dataclasses.replace(
            config, batch_size=1, objects_per_image=2, correction_rounds=0, learning_rate=0.5
        )

    monkeypatch.setattr(finetuning, "default_config", too_fast)
    told = []
    monkeypatch.setattr(
        _finetune_widget, "_notify", lambda text, level="info": told.append((text, level))
    )
    widget = open_finetune(viewer)
    statuses = []
    shown = widget._set_status
    monkeypatch.setattr(widget, "_set_status", lambda text: (statuses.append(text), shown(text)))
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("tiny_cells"))
    widget.steps_spin.setValue(2)
    out = tmp_path / "worse.pt"
    widget.out_edit.setText(str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error", finetuning.FinetuneWarning)  # said, not warned
        result = widget.start(wait=True, timeout=300)
    assert result is not None and result.improved is False and result.best_step == 0
    assert result.final_iou < result.before_iou
    assert "did not improve" in widget.status_label.text()
    assert "starting weights are kept" in widget.status_label.text()
    assert [level for text, level in told if "did not improve" in text] == ["warning"]
    assert any("held-out IoU 0." in text and "step 2" in text for text in statuses)
    start = load_model("tiny_cells", device="cpu", dtype="float32").state_dict()
    saved = load_model(out, device="cpu", dtype="float32").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.items())


@pytest.mark.parametrize("kind", ["colour-coded", "negative"])
def test_refuses_labels_that_are_not_id_images(viewer, kind):
    from napari_sam._messages import UserError

    labels = viewer.layers["annotations"].data
    if kind == "colour-coded":
        colours = np.random.default_rng(0).integers(40, 256, (labels.max() + 1, 3))
        colours[0] = 0
        rgb = colours[labels].astype(np.uint8)
        viewer.layers.clear()
        viewer.add_image(np.stack([labels * 40] * 3, -1).astype(np.uint8), name="rgb")
        viewer.add_labels(rgb, name="annotations")
        says = "look colour-coded"
    else:
        viewer.layers["annotations"].data = np.where(labels > 0, labels, -1).astype(np.int32)
        says = "negative ids"
    widget = open_finetune(viewer)
    with pytest.raises(UserError, match=says) as raised:
        widget.add_pair()
    assert "'annotations'" in str(raised.value) and "integer id images" in str(raised.value)
    assert widget.pairs == [] and widget.pair_list.count() == 0
    assert widget.start(wait=True) is None  # the layers chosen above, without a pair
    assert says in widget.status_label.text() and not widget.busy
