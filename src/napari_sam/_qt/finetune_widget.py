"""The "Fine-tune SAM" dock widget: train a model on the viewer's (image, labels) pairs.

napari glue only: `napari_sam.training.finetuning.finetune` does the work (the same
function `napari-sam finetune` calls). Training runs in a napari worker thread with a
cancelable progress bar in the activity dock; it stops between steps when cancelled.
The saved checkpoint is listed as a model choice of the "Segment Anything" widget.

Held-out data: a deterministic 20 % (by default) of all labelled objects, over all
pairs, is never trained on and measures single-click IoU as training goes; the best
weights (the starting ones count) are saved, and the widget says when nothing improved.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._llvm_guard import hide_triton_if_llvm_is_loaded
from .._messages import UserError as _UserError
from .._messages import notify as _notify
from .sam_widget import LOCAL_FILE, PREVIEW_NAME, device_choices, model_choices
from ._workers import cleanup_at_exit, start_worker

if TYPE_CHECKING:
    import napari

    from ..training.finetuning import FinetuneResult

MAIN_WIDGET_MODEL = "(model in the Segment Anything widget)"
CURRENT_SLICE, ALL_SLICES = "current slice", "all slices"
DECODER_ONLY, FULL = "decoder only (fast)", "full model"


@dataclass
class LayerPair:
    """An image layer, its labels, and which 2D slices to train on: `slice_index` for
    one slice ({layer axis: index}), None for every slice."""

    image: Any
    labels: Any
    displayed: tuple[int, int]
    slice_index: dict[int, int] | None

    def describe(self) -> str:
        where = "all slices" if self.slice_index is None else "2D"
        if self.slice_index:
            where = "slice " + ", ".join(f"{a}={i}" for a, i in self.slice_index.items())
        return f"{self.image.name} + {self.labels.name} ({where})"


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread."""

    step = Signal(int, int, float, float)  # step, steps, loss, held-out IoU (nan: none)
    stage = Signal(str)


def main_widgets(viewer) -> list:
    """The open "Segment Anything" widgets of `viewer`."""
    from .sam_widget import SamWidget

    try:
        docked = list(viewer.window.dock_widgets.values())
    except AttributeError:  # a viewer without a window
        return []
    return [w for w in docked if isinstance(w, SamWidget) and not w._closed]


class FinetuneWidget(QWidget):
    """Fine-tune SAM on the viewer's layers. Scripting:

    >>> widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler", "Fine-tune SAM")[1]
    >>> widget.add_pair(image_layer, labels_layer, all_slices=True)
    >>> widget.model_combo.setCurrentText("vit_b_lm")
    >>> widget.out_edit.setText("mine.pt")
    >>> widget.start(wait=True).after_iou
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        hide_triton_if_llvm_is_loaded()  # napari's canvas may have loaded Mesa's libLLVM
        self.viewer = napari_viewer
        self.pairs: list[LayerPair] = []
        self.result: FinetuneResult | None = None
        self._worker = None
        self._progress = None
        self._stop = threading.Event()
        self._connected: list[tuple[Any, Any]] = []
        self._closed = False
        self._checked = ""  # the last held-out IoU, shown in the status
        self._relay = _Relay()
        self._relay.step.connect(self._on_step)
        self._relay.stage.connect(self._on_stage)
        self._build_ui()
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            emitter.connect(self._on_layers_changed)
            self._connected.append((emitter, self._on_layers_changed))
        self._refresh_layer_choices()
        cleanup_at_exit(self)  # stop training before Python tears Qt down
        alive = weakref.ref(self)  # a closed viewer deletes this widget without closeEvent
        self.destroyed.connect(lambda *_: (widget := alive()) is not None and widget.cleanup())

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.slices_combo = QComboBox()
        self.slices_combo.addItems([CURRENT_SLICE, ALL_SLICES])
        self.slices_combo.setToolTip(
            "nD data: train on the slice on screen, or on every labelled 2D slice"
        )
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Slices", self.slices_combo)
        layout.addLayout(form)

        pair_buttons = QHBoxLayout()
        self.add_button = QPushButton("Add pair")
        self.add_button.clicked.connect(self._on_add_clicked)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self._on_remove_clicked)
        pair_buttons.addWidget(self.add_button)
        pair_buttons.addWidget(self.remove_button)
        layout.addLayout(pair_buttons)
        self.pair_list = QListWidget()
        self.pair_list.setToolTip("Training pairs; empty = the image and labels chosen above")
        self.pair_list.setMaximumHeight(90)
        layout.addWidget(self.pair_list)

        form = QFormLayout()
        self.model_combo = QComboBox()
        self.fill_model_choices()
        form.addRow("Start from", self.model_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(device_choices())
        form.addRow("Device", self.device_combo)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([DECODER_ONLY, FULL])
        self.mode_combo.setToolTip(
            "Decoder only: the image encoder stays fixed (fast, works on a CPU). "
            "Full: the image encoder trains too (needs a GPU for real models)."
        )
        form.addRow("Train", self.mode_combo)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(100)
        form.addRow("Steps", self.steps_spin)
        self.holdout_spin = QSpinBox()
        self.holdout_spin.setRange(0, 90)
        self.holdout_spin.setValue(20)
        self.holdout_spin.setSuffix(" %")
        self.holdout_spin.setToolTip(
            "Share of the labelled objects never trained on; they measure single-click "
            "IoU before and after"
        )
        form.addRow("Held out", self.holdout_spin)
        out_row = QHBoxLayout()
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("(a new file in the model cache folder)")
        browse = QPushButton("...")
        browse.clicked.connect(self._on_browse)
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(browse)
        form.addRow("Save to", out_row)
        layout.addLayout(form)

        actions = QHBoxLayout()
        self.run_button = QPushButton("Fine-tune")
        self.run_button.clicked.connect(lambda: self.start(wait=False))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        actions.addWidget(self.run_button)
        actions.addWidget(self.cancel_button)
        layout.addLayout(actions)
        self.status_label = QLabel("Add (image, labels) pairs, pick a model, fine-tune.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def fill_model_choices(self) -> None:
        """Model choices: the one loaded in the main widget, the zoo, fine-tuned ones."""
        current = self.model_combo.currentData()
        self.model_combo.clear()
        self.model_combo.addItem(MAIN_WIDGET_MODEL, MAIN_WIDGET_MODEL)
        for label, data in model_choices(marked=False):
            self.model_combo.addItem(label, data)
        index = self.model_combo.findData(current)
        self.model_combo.setCurrentIndex(max(index, 0))

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status_label.setText(text)

    def _on_browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the fine-tuned model", "", "*.pt")
        if path:
            self.out_edit.setText(path if Path(path).suffix else path + ".pt")

    # ------------------------------------------------------------------ layers
    def _layers_of(self, kind) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layer_choices(self) -> None:
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.clear()
            # The Segment Anything widget's preview is never training data.
            names = [layer.name for layer in self._layers_of(kind) if layer.name != PREVIEW_NAME]
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

    def _on_layers_changed(self, event=None) -> None:
        if self._closed:
            return
        layers = self.viewer.layers
        kept = [p for p in self.pairs if p.image in layers and p.labels in layers]
        if len(kept) != len(self.pairs):
            self.pairs = kept
            self._refresh_pair_list()
        self._refresh_layer_choices()

    def _refresh_pair_list(self) -> None:
        self.pair_list.clear()
        self.pair_list.addItems([pair.describe() for pair in self.pairs])

    def _chosen_layers(self):
        image_name, labels_name = self.image_combo.currentText(), self.labels_combo.currentText()
        if not image_name or not labels_name:
            raise _UserError("Add an image layer and a Labels layer drawn on it first.")
        return self.viewer.layers[image_name], self.viewer.layers[labels_name]

    def _pair(self, image, labels, all_slices: bool) -> LayerPair:
        from ..training.data import check_labels

        try:  # before anything else: colour-coded labels also differ in ndim
            check_labels(labels.data, ndim=None, name=f"The Labels layer {labels.name!r}")
        except ValueError as error:
            raise _UserError(str(error)) from None
        if image.ndim != labels.ndim:
            raise _UserError(
                f"{image.name!r} is {image.ndim}D but {labels.name!r} is {labels.ndim}D: "
                "pick the labels drawn on this image."
            )
        dims = self.viewer.dims
        offset = dims.ndim - image.ndim
        displayed = tuple(axis - offset for axis in dims.displayed[-2:] if axis - offset >= 0)
        if len(displayed) != 2:
            raise _UserError("The image layer needs two displayed axes (use the 2D view).")
        slice_index: dict[int, int] | None = None
        if not all_slices:
            position = image.world_to_data(dims.point)
            shape = image.data[0].shape if image.multiscale else image.data.shape
            slice_index = {
                axis: int(np.clip(np.round(position[axis]), 0, shape[axis] - 1))
                for axis in range(image.ndim)
                if axis not in displayed
            }
        return LayerPair(image, labels, displayed, slice_index)

    def add_pair(self, image=None, labels=None, all_slices: bool | None = None) -> LayerPair:
        """Add a training pair: by default the layers and the slice mode chosen in the
        widget. "Current slice" takes the slice on screen now."""
        if image is None or labels is None:
            chosen = self._chosen_layers()
            image = chosen[0] if image is None else image
            labels = chosen[1] if labels is None else labels
        if all_slices is None:
            all_slices = self.slices_combo.currentText() == ALL_SLICES
        pair = self._pair(image, labels, all_slices)
        self.pairs.append(pair)
        self._refresh_pair_list()
        return pair

    def _on_add_clicked(self) -> None:
        try:
            self.add_pair()
        except _UserError as error:
            _notify(str(error), "warning")

    def _on_remove_clicked(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self.pairs):
            del self.pairs[row]
            self._refresh_pair_list()

    def training_data(self) -> list:
        """The 2D examples of all pairs (copies, so that painting during training does
        not change them); the layers chosen above when no pair was added."""
        from ..training.data import LabelledImage
        from ..training.finetuning import labelled_slices

        pairs = self.pairs or [self._pair(*self._chosen_layers(), self._all_slices())]
        items = []
        for pair in pairs:
            image = pair.image.data[0] if pair.image.multiscale else pair.image.data
            try:
                found = labelled_slices(
                    image,
                    pair.labels.data,
                    pair.displayed,
                    pair.slice_index,
                    rgb=pair.image.rgb,
                )
            except (ValueError, IndexError) as error:
                raise _UserError(f"{pair.describe()}: {error}") from None
            items += [
                LabelledImage(np.array(item.image), [np.array(lv) for lv in item.levels])
                for item in found
            ]
        if not items:
            raise _UserError("The chosen labels are empty: paint some objects first.")
        return items

    def _all_slices(self) -> bool:
        return self.slices_combo.currentText() == ALL_SLICES

    # ------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _model_source(self):
        """(a callable returning the starting model, a name for it), checked now."""
        choice = self.model_combo.currentData()
        full = self.mode_combo.currentText() == FULL
        if choice == MAIN_WIDGET_MODEL:
            loaded = [w for w in main_widgets(self.viewer) if w.model is not None]
            if not loaded:
                raise _UserError(
                    "No model is loaded in the Segment Anything widget: load one there, or "
                    "pick a model to start from here."
                )
            model, name = loaded[0].model, loaded[0]._model_name or "model"
            # A copy: the main widget keeps segmenting with the original meanwhile.
            return (lambda: copy.deepcopy(model)), name
        if choice == LOCAL_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt *.ckpt);;All (*)"
            )
            if not path:
                raise _UserError("No checkpoint chosen.")
            choice = path
        device = self.device_combo.currentText()

        def load():
            from ..zoo import load_model

            return load_model(
                choice, device=device, dtype="float32" if full else "auto", progress=False
            )

        return load, Path(choice).stem if ("/" in choice or "\\" in choice) else choice

    def _out_path(self, base: str) -> Path:
        text = self.out_edit.text().strip()
        if text:
            return Path(text).expanduser()
        from ..zoo import cache_dir

        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = cache_dir() / "finetuned" / f"{Path(base).stem}-finetuned-{stamp}.pt"
        self.out_edit.setText(str(path))
        return path

    def start(self, wait: bool = False, timeout: float | None = None):
        """Start fine-tuning in a worker thread; `wait=True` returns its `FinetuneResult`
        (None when it failed: the error is shown as a notification)."""
        if self._worker is not None:
            _notify("Fine-tuning is already running; cancel it first.", "warning")
            return None
        try:
            items = self.training_data()
            load, base = self._model_source()
        except _UserError as error:
            self._set_status(str(error))
            _notify(str(error), "warning")
            return None
        self._launch(items, load, base)
        if wait:
            self.wait(timeout)
            return self.result
        return None

    def _launch(self, items, load, base: str) -> None:
        from napari.utils import cancelable_progress

        from ..training.finetuning import finetune

        steps = self.steps_spin.value()
        decoder_only = self.mode_combo.currentText() != FULL
        holdout = self.holdout_spin.value() / 100
        out_path = self._out_path(base)
        self.result = None
        self._checked = ""
        self._stop.clear()
        self._progress = cancelable_progress(
            total=steps, desc="SAM fine-tune: loading the model", cancel_callback=self.cancel
        )
        relay, stop = self._relay, self._stop

        def progress(step: int, total: int, stats: dict) -> None:
            loss, iou = (float(stats.get(key, math.nan)) for key in ("loss", "held_out_iou"))
            relay.step.emit(step, total, loss, iou)

        def work():
            model = load()
            relay.stage.emit("evaluating")
            return finetune(
                model,
                items,
                steps=steps,
                decoder_only=decoder_only,
                out_path=out_path,
                progress=progress,
                should_stop=stop.is_set,
                holdout=holdout,
                metadata={"base_model": base},
                warn=False,  # the widget says it (see _on_returned)
            )

        self._worker = start_worker(
            work, returned=self._on_returned, errored=self._on_error, finished=self._on_finished
        )
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        examples = f"{len(items)} 2D example{'s' * (len(items) != 1)}"
        self._set_status(f"Fine-tuning {base} on {examples} for {steps} steps...")

    def _on_stage(self, stage: str) -> None:
        if self._progress is not None:
            self._progress.set_description(f"SAM fine-tune: {stage}")

    def _on_step(self, step: int, total: int, loss: float, iou: float) -> None:
        pbar = self._progress
        if pbar is None or self.result is not None:  # a late signal: the run is over
            return
        if not math.isnan(iou):
            self._checked = f", held-out IoU {iou:.3f} at step {step}"
        # Status first: updating the progress bar can process pending events (the end of
        # the run among them), whose status must win.
        self._set_status(f"Step {step}/{total}, loss {loss:.3f}{self._checked}")
        if pbar.desc != "SAM fine-tune: training":
            pbar.set_description("SAM fine-tune: training")
        pbar.update(step - pbar.n)

    def _on_returned(self, result) -> None:
        self.result = result
        if result.cancelled:
            self._set_status(
                f"Cancelled after {result.steps_done} of {result.steps} steps; nothing saved."
            )
            return

        text = f"{result.summary()} It is now a model choice of Segment Anything."
        level = "info" if result.improved else "warning"
        self._set_status(text)
        _notify(f"Fine-tune SAM: {text}", level)
        self.fill_model_choices()
        for widget in main_widgets(self.viewer):
            widget.refresh_model_choices(select=str(result.path))

    def _on_error(self, error: Exception) -> None:
        self._set_status(f"Fine-tuning failed: {error}")
        _notify(f"Fine-tune SAM: {error}", "error")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
        self._progress = None
        self._worker = None
        if not self._closed:
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)

    def cancel(self) -> None:
        """Stop fine-tuning after the current step; nothing is saved."""
        if self._worker is not None:
            self._stop.set()
            self._set_status("Cancelling after the current step...")

    def wait(self, timeout: float | None = None) -> None:
        """Process events until the run is over (for scripts and tests)."""
        from qtpy.QtWidgets import QApplication

        start = time.perf_counter()
        while self._worker is not None:
            QApplication.processEvents()
            time.sleep(0.005)
            if timeout is not None and time.perf_counter() - start > timeout:
                raise TimeoutError("Fine-tune SAM: timed out waiting for the worker.")
        QApplication.processEvents()

    # ------------------------------------------------------------------ lifetime
    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cancel()
        for emitter, callback in self._connected:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(callback)
        self._connected.clear()

    def closeEvent(self, event) -> None:
        self.cleanup()
        super().closeEvent(event)

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cleanup()
        return super().event(event)
