"""The "Fine-tune SAM" widget in a real napari viewer, with the tiny and bundled models."""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings

import numpy as np
import pytest
import torch
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_sam._qt._layers import PREVIEW_NAME
from napari_sam._qt._messages import UserError
from napari_sam._qt.finetune_widget import (
    ALL_SLICES,
    FULL,
    LOCAL_FILE,
    MAIN_WIDGET_MODEL,
    main_widgets,
)
from napari_sam.training import finetuning
from napari_sam.training.finetuning import (
    finetuned_models,
    register_finetuned,
    save_finetuned,
    unregister_finetuned,
)
from napari_sam.zoo import load_model
from tests._qt.helpers import open_widget
from tests.training.test_training import blobs

FINETUNE = ("napari-sam-labeler", "Fine-tune SAM")


@pytest.fixture(autouse=True)
def fresh_finetuned_list():
    """Each test starts and ends with no fine-tuned model listed (the list lasts the
    Python session); those listed before come back afterwards."""
    before = finetuned_models()
    for name in before:
        unregister_finetuned(name)
    yield
    for name in finetuned_models():
        unregister_finetuned(name)
    for name, path in before.items():
        register_finetuned(path, name)


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


def model_values(widget) -> list:
    return list(widget.options.model.choices)


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
    assert widget.layers_form.image_layer.value == "blobs"
    assert widget.layers_form.labels_layer.value == "annotations"
    widget.add_pair()
    assert widget.pair_list.count() == 1
    widget.options.model.value = MAIN_WIDGET_MODEL
    widget.options.steps.value = 3
    out = tmp_path / "blobs-tuned.pt"
    widget.options.out_path.value = out

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
    assert str(out.resolve()) in model_values(widget)


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

    widget.layers_form.slices.value = ALL_SLICES
    widget.add_pair()
    assert len(widget.training_data()) == 2  # slices 0 and 2
    widget.pairs.clear()
    current = widget.add_pair(image_layer, labels_layer, all_slices=False)
    assert current.slice_index == {0: 2}
    (item,) = widget.training_data()
    assert np.array_equal(item.image, images[2]) and np.array_equal(item.levels[0], labels[2])

    # The same objects twice would be trained on and held out at once: refused.
    with pytest.raises(UserError, match="overlaps"):
        widget.add_pair(image_layer, labels_layer, all_slices=True)
    assert len(widget.pairs) == 1
    widget.pairs.clear()
    widget.add_pair(image_layer, labels_layer, all_slices=True)
    register_finetuned(base)
    widget.refresh_model_choices(select=str(base.resolve()))
    assert widget.options.model.value == str(base.resolve())
    widget.options.mode.value = FULL
    widget.options.steps.value = 2
    widget.options.held_out.value = 0  # nothing held out: the trained weights are kept
    widget.options.out_path.value = tmp_path / "full.pt"
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
    register_finetuned(base)
    widget.refresh_model_choices()
    widget.options.model.value = str(base.resolve())
    widget.options.steps.value = 10_000
    out = tmp_path / "cancelled.pt"
    widget.options.out_path.value = out
    widget.start(wait=False)
    assert widget.busy and widget.cancel_button.isEnabled()
    pbar = widget.job.progress
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
    assert not widget.busy and widget.run_button.isEnabled()


def test_reports_what_is_missing(viewer):
    widget = open_finetune(viewer)
    widget.options.model.value = MAIN_WIDGET_MODEL
    assert widget.start(wait=True) is None
    assert "No model is loaded" in widget.status_label.text()
    viewer.layers["annotations"].data = np.zeros_like(viewer.layers["annotations"].data)
    widget.options.model.value = "tiny_cells"
    assert widget.start(wait=True) is None
    assert "empty" in widget.status_label.text()
    assert not widget.busy


def test_says_when_fine_tuning_did_not_help_and_saves_the_starting_model(
    viewer, tmp_path, monkeypatch
):
    """A run that only makes the model worse (far too high a learning rate) keeps the
    starting weights, says so in the status and a warning notification, and shows the
    held-out IoU in the status as training goes."""
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
    notified = len(notification_manager.records)
    widget = open_finetune(viewer)
    statuses = []  # the status after each step (the widget's own slot runs first)
    widget.stepped.connect(lambda *_: statuses.append(widget.status_label.text()))
    widget.options.model.value = "tiny_cells"
    widget.options.steps.value = 2
    out = tmp_path / "worse.pt"
    widget.options.out_path.value = out
    with warnings.catch_warnings():
        warnings.simplefilter("error", finetuning.FinetuneWarning)  # said, not warned
        result = widget.start(wait=True, timeout=300)
    assert result is not None and result.improved is False and result.best_step == 0
    assert result.final_iou < result.before_iou
    assert "did not improve" in widget.status_label.text()
    assert "starting weights are kept" in widget.status_label.text()
    told = [(n.message, str(n.severity)) for n in notification_manager.records[notified:]]
    assert [level for text, level in told if "did not improve" in text] == ["warning"]
    assert any("held-out IoU 0." in text and "step 2" in text for text in statuses)
    start = load_model("tiny_cells", device="cpu", dtype="float32").state_dict()
    saved = load_model(out, device="cpu", dtype="float32").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.items())


@pytest.mark.parametrize("kind", ["colour-coded", "negative"])
def test_refuses_labels_that_are_not_id_images(viewer, kind):
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


def test_starts_from_a_checkpoint_chosen_in_the_file_dialog(
    viewer, tiny_model, tmp_path, monkeypatch, cache
):
    """The dialog offers every checkpoint format the loader reads (safetensors too, as in
    the Segment Anything widget); cancelling it starts nothing. Without a path given, the
    model goes to a new file in the cache, named after the one it started from."""
    base = save_finetuned(tiny_model, tmp_path / "picked.pt")
    asked, answers = [], iter([("", ""), (str(base), "")])

    def dialog(parent, caption, folder, filters):
        asked.append(filters)
        return next(answers)

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(dialog))
    widget = open_finetune(viewer)
    widget.options.model.value = LOCAL_FILE
    widget.options.steps.value = 1
    widget.options.held_out.value = 0
    assert widget.start(wait=True) is None
    assert "No checkpoint chosen" in widget.status_label.text() and not widget.busy
    result = widget.start(wait=True, timeout=300)
    assert result is not None and result.path.parent == cache / "finetuned"
    assert result.path.name.startswith("picked-finetuned-") and result.path.is_file()
    assert str(result.path) in widget.status_label.text()
    assert widget.options.out_path.value is None  # the next run gets its own file
    stored = torch.load(result.path, weights_only=True)[finetuning.METADATA_KEY]
    assert stored["base_model"] == "picked"
    assert len(asked) == 2
    assert all(f"*.{ext}" in asked[0] for ext in ("pth", "pt", "ckpt", "safetensors"))


def test_never_overwrites_an_existing_file(viewer, tmp_path):
    """A path without a suffix gets ".pt"; a file already there is kept and the run is
    refused with what to do."""
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"the user's own model")
    widget = open_finetune(viewer)
    widget.options.model.value = "tiny_cells"
    widget.options.out_path.value = tmp_path / "mine"
    assert widget.start(wait=True) is None
    assert f"{mine} exists: choose a new file name" in widget.status_label.text()
    assert mine.read_bytes() == b"the user's own model" and not widget.busy


def test_pairs_and_layer_choices_follow_the_viewers_layers(viewer):
    widget = open_finetune(viewer)
    viewer.add_labels(np.zeros((128, 128), np.int32), name=PREVIEW_NAME)
    viewer.add_labels(np.zeros((128, 128), np.int32), name="more")
    assert widget.layers_form.labels_layer.choices == ("annotations", "more")  # never the preview
    pair = widget.add_pair()
    assert pair.slice_index == {} and widget.pair_list.count() == 1
    assert "'blobs' + 'annotations'" in widget.pair_list.item(0).text()
    del viewer.layers["annotations"]
    assert widget.pairs == [] and widget.pair_list.count() == 0
    assert widget.layers_form.labels_layer.choices == ("more",)
