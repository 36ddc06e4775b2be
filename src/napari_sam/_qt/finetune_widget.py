"""The "Fine-tune SAM" dock widget: train a model on the viewer's (image, labels) pairs.

napari glue only: `napari_sam.training.data.gather_examples` cuts the pairs into 2D
examples and `napari_sam.training.finetuning.finetune` trains (the function
`napari-sam finetune` calls too). Training runs as a `Job` with a cancelable progress bar
in the activity dock; a cancel stops it after the current step and saves nothing. The
saved checkpoint is listed as a model choice of the "Segment Anything" widget.

Held-out data: a deterministic 20 % (by default) of all labelled objects, over all
pairs, is never trained on and measures single-click IoU as training goes; the best
weights (the starting ones count) are saved, and the widget says when nothing improved.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QListWidget, QPushButton, QVBoxLayout

from ..training.data import LabelledStack, gather_examples
from ._base import DockWidget, Job, JobCancelled, UserError, layers_of
from ._choices import LOCAL_FILE, ask_checkpoint, device_choices, model_choices
from ._layers import PREVIEW_NAME, layer_types, same_layer
from ._messages import notify

if TYPE_CHECKING:
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
        return f"{self.image.name!r} + {self.labels.name!r} ({where})"

    def stack(self) -> LabelledStack:
        """The layers' data now, as the Qt-free description of what to train on."""
        image = self.image.data[0] if self.image.multiscale else self.image.data
        return LabelledStack(
            image,
            self.labels.data,
            rgb=self.image.rgb,
            displayed=self.displayed,
            slice_index=self.slice_index,
            name=self.describe(),
        )


def main_widgets(viewer) -> list:
    """The "Segment Anything" widgets docked in `viewer`'s window."""
    from .sam_widget import SamWidget  # not at module level: no import cycle, ever

    try:
        docked = list(viewer.window.dock_widgets.values())
    except AttributeError:  # a viewer without a window
        return []
    return [widget for widget in docked if isinstance(widget, SamWidget)]


class FinetuneWidget(DockWidget):
    """Fine-tune SAM on the viewer's layers. Scripting:

    >>> widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler", "Fine-tune SAM")[1]
    >>> widget.add_pair(image_layer, labels_layer, all_slices=True)
    >>> widget.options.model.value = "vit_b_lm"      # or MAIN_WIDGET_MODEL, a checkpoint path
    >>> widget.options.steps.value = 200
    >>> widget.options.out_path.value = "mine.pt"
    >>> widget.start(wait=True).after_iou

    `stepped(step, steps, loss, held-out IoU or nan)` is emitted after every step.
    """

    name = "Fine-tune SAM"
    stepped = Signal(int, int, float, float)

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.pairs: list[LayerPair] = []
        self.result: FinetuneResult | None = None
        self.job: Job | None = None  # the last run: `job.progress` is its bar
        self._checked = ""  # the last held-out IoU, shown in the status
        self._build_ui()
        self.stepped.connect(self._on_step)
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self.connect_event(emitter, self._on_layers_changed)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        image_type, labels_type, *_ = layer_types()
        self.layers_form = Container(
            widgets=[
                ComboBox(name="image_layer", label="Image", choices=self._names(image_type)),
                ComboBox(name="labels_layer", label="Labels", choices=self._names(labels_type)),
                ComboBox(
                    name="slices",
                    label="Slices",
                    choices=[CURRENT_SLICE, ALL_SLICES],
                    tooltip="nD data: train on the slice on screen, or on every labelled slice",
                ),
            ]
        )
        self.options = Container(
            widgets=[
                ComboBox(name="model", label="Start from", choices=self._model_choices),
                ComboBox(name="device", label="Device", choices=device_choices()),
                ComboBox(
                    name="mode",
                    label="Train",
                    choices=[DECODER_ONLY, FULL],
                    tooltip="Decoder only: the image encoder stays fixed (fast, works on a "
                    "CPU). Full: the image encoder trains too (needs a GPU for real models).",
                ),
                SpinBox(name="steps", label="Steps", min=1, max=1_000_000, value=100),
                SpinBox(
                    name="held_out",
                    label="Held out (%)",
                    min=0,
                    max=90,
                    value=20,
                    tooltip="Share of the labelled objects never trained on; they measure "
                    "single-click IoU before and after",
                ),
                FileEdit(name="out_path", label="Save to", mode="w", filter="*.pt", nullable=True),
            ]
        )
        self.options.out_path.line_edit.native.setPlaceholderText(
            "(a new file in the model cache folder)"
        )
        self.add_button = QPushButton("Add pair")
        self.add_button.clicked.connect(self._on_add_clicked)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self._on_remove_clicked)
        self.pair_list = QListWidget()
        self.pair_list.setToolTip("Training pairs; empty = the image and labels chosen above")
        self.pair_list.setMaximumHeight(90)
        self.run_button = QPushButton("Fine-tune")
        self.run_button.clicked.connect(lambda: self.start(wait=False))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.set_status("Add (image, labels) pairs, pick a model, fine-tune.")

        layout = QVBoxLayout(self)
        layout.addWidget(self.layers_form.native)
        layout.addLayout(_row(self.add_button, self.remove_button))
        layout.addWidget(self.pair_list)
        layout.addWidget(self.options.native)
        layout.addLayout(_row(self.run_button, self.cancel_button))
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    def _names(self, kind):
        # The Segment Anything widget's preview is never training data.
        return lambda _widget: [
            layer.name for layer in layers_of(self.viewer, kind) if layer.name != PREVIEW_NAME
        ]

    @staticmethod
    def _model_choices(_widget=None) -> list[tuple[str, str]]:
        return [(MAIN_WIDGET_MODEL, MAIN_WIDGET_MODEL), *model_choices(marked=False)]

    def refresh_model_choices(self, select: str | None = None) -> None:
        """Re-read the model choices (the zoo, fine-tuned checkpoints); choose the one
        whose value is `select` when given, else keep the current one."""
        combo = self.options.model
        combo.reset_choices()
        if select is not None and select in [value for _label, value in self._model_choices()]:
            combo.value = select

    # ------------------------------------------------------------------ pairs
    def _on_layers_changed(self, _event=None) -> None:
        layers = self.viewer.layers
        kept = [p for p in self.pairs if p.image in layers and p.labels in layers]
        if len(kept) != len(self.pairs):
            self.pairs[:] = kept
            self._refresh_pair_list()
        self.layers_form.reset_choices()

    def _refresh_pair_list(self) -> None:
        self.pair_list.clear()
        self.pair_list.addItems([pair.describe() for pair in self.pairs])

    def _chosen_layers(self):
        image, labels = self.layers_form.image_layer.value, self.layers_form.labels_layer.value
        if not image or not labels:
            raise UserError("Add an image layer and a Labels layer drawn on it first.")
        return self.viewer.layers[image], self.viewer.layers[labels]

    def _pair(self, image, labels, all_slices: bool) -> LayerPair:
        dims = self.viewer.dims
        offset = dims.ndim - image.ndim
        displayed = tuple(axis - offset for axis in dims.displayed[-2:] if axis - offset >= 0)
        if len(displayed) != 2:
            raise UserError("The image layer needs two displayed axes (use the 2D view).")
        slice_index: dict[int, int] | None = None
        if not all_slices:
            position = image.world_to_data(dims.point)
            shape = image.data[0].shape if image.multiscale else image.data.shape
            slice_index = {
                axis: int(np.clip(np.round(position[axis]), 0, shape[axis] - 1))
                for axis in range(image.ndim)
                if axis not in displayed
            }
        pair = LayerPair(image, labels, displayed, slice_index)
        try:  # labels that are no id images, or not drawn on this image: said now
            pair.stack().check()
        except ValueError as error:
            raise UserError(str(error)) from None
        return pair

    def add_pair(self, image=None, labels=None, all_slices: bool | None = None) -> LayerPair:
        """Add a training pair: by default the layers and the slice mode chosen in the
        widget. "Current slice" takes the slice on screen now. Raises `UserError` for
        labels that are not integer id images of the image's shape."""
        if image is None or labels is None:
            chosen = self._chosen_layers()
            image = chosen[0] if image is None else image
            labels = chosen[1] if labels is None else labels
        if all_slices is None:
            all_slices = self.layers_form.slices.value == ALL_SLICES
        pair = self._pair(image, labels, all_slices)
        for other in self.pairs:  # the same object twice would be trained on and held out
            overlap = None in (other.slice_index, pair.slice_index) or (
                other.slice_index == pair.slice_index
            )
            if same_layer(other.labels, pair.labels) and overlap:
                raise UserError(
                    f"{pair.describe()} overlaps {other.describe()}, already in the list: "
                    "an object in both could be trained on and held out at once."
                )
        self.pairs.append(pair)
        self._refresh_pair_list()
        return pair

    def _on_add_clicked(self) -> None:
        try:
            self.add_pair()
        except UserError as error:
            self.user_error(error)

    def _on_remove_clicked(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self.pairs):
            del self.pairs[row]
            self._refresh_pair_list()

    def training_data(self) -> list:
        """The 2D examples (`LabelledImage`) of all pairs, copied, so that painting
        during training changes nothing; the layers chosen above when no pair was added.
        Raises `UserError` for refused or empty labels."""
        all_slices = self.layers_form.slices.value == ALL_SLICES
        pairs = self.pairs or [self._pair(*self._chosen_layers(), all_slices)]
        try:
            return gather_examples(pair.stack() for pair in pairs)
        except ValueError as error:
            raise UserError(str(error)) from None

    # ------------------------------------------------------------------ running
    def _model_source(self):
        """(a callable returning the starting model, a name for it), checked now."""
        choice = self.options.model.value
        if choice == MAIN_WIDGET_MODEL:
            loaded = [w for w in main_widgets(self.viewer) if w.model is not None]
            if not loaded:
                raise UserError(
                    "No model is loaded in the Segment Anything widget: load one there, or "
                    "pick a model to start from here."
                )
            model = loaded[0].model
            name = getattr(loaded[0], "model_name", "") or "model"
            # A copy: the main widget keeps segmenting with the original meanwhile.
            return (lambda: copy.deepcopy(model)), name
        if choice == LOCAL_FILE:
            choice = ask_checkpoint(self)
            if choice is None:
                raise UserError("No checkpoint chosen.")
        device = self.options.device.value
        dtype = "float32" if self.options.mode.value == FULL else "auto"

        def load():
            from ..zoo import load_model

            return load_model(choice, device=device, dtype=dtype, progress=False)

        return load, Path(choice).stem if ("/" in choice or "\\" in choice) else choice

    def _out_path(self, base: str) -> Path:
        """Where to save: the path given (".pt" added when it has no suffix), else a new
        file in the cache (each run its own; the status says where). Raises `UserError`
        for a file that exists: never overwritten."""
        path = self.options.out_path.value
        if path is None:
            from ..zoo import cache_dir

            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = cache_dir() / "finetuned" / f"{Path(base).stem}-finetuned-{stamp}.pt"
        path = Path(path).expanduser()
        path = path if path.suffix else path.with_suffix(".pt")
        if path.exists():
            raise UserError(f"{path} exists: choose a new file name to save to, or delete it.")
        return path

    def start(self, wait: bool = False, timeout: float | None = None):
        """Start fine-tuning in a worker thread; `wait=True` returns its `FinetuneResult`
        (None when it failed: the error is in the status and a notification)."""
        if self.busy:
            self.user_error("Fine-tuning is already running; cancel it first.")
            return None
        try:
            items = self.training_data()
            load, base = self._model_source()
            out_path = self._out_path(base)
        except UserError as error:
            self.user_error(error)
            return None
        self._launch(items, load, base, out_path)
        if wait:
            self.wait(timeout)
            return self.result
        return None

    def _launch(self, items, load, base: str, out_path: Path) -> None:
        from ..training.finetuning import finetune

        steps = self.options.steps.value
        decoder_only = self.options.mode.value != FULL
        holdout = self.options.held_out.value / 100
        self.result = None
        self._checked = ""
        outcome: dict[str, FinetuneResult] = {}  # a cancelled run's result counts too

        def work(job: Job) -> None:
            job.set_description("SAM fine-tune: loading the model")
            model = load()
            job.set_description("SAM fine-tune: evaluating")

            def progress(step: int, total: int, stats: dict) -> None:
                loss, iou = (float(stats.get(key, math.nan)) for key in ("loss", "held_out_iou"))
                with contextlib.suppress(RuntimeError):  # the widget was deleted
                    self.stepped.emit(step, total, loss, iou)
                if step == 1:
                    job.set_description("SAM fine-tune: training")
                with contextlib.suppress(JobCancelled):  # finetune stops at should_stop
                    job.report(step, total)

            outcome["result"] = finetune(
                model,
                items,
                steps=steps,
                decoder_only=decoder_only,
                out_path=out_path,
                progress=progress,
                should_stop=lambda: job.cancelled,
                holdout=holdout,
                metadata={"base_model": base},
                warn=False,  # the widget says it (see _on_finished)
            )

        self.job = self.start_job(
            work,
            "SAM fine-tune: loading the model",
            steps,
            errored=lambda error: self.failure("Fine-tuning", error),
            finished=lambda: self._on_finished(outcome.get("result")),
        )
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        examples = f"{len(items)} 2D example{'s' * (len(items) != 1)}"
        self.set_status(f"Fine-tuning {base} on {examples} for {steps} steps...")

    def _on_step(self, step: int, total: int, loss: float, iou: float) -> None:
        if not self.busy:  # a late signal: the run is over, its outcome is shown
            return
        if not math.isnan(iou):
            self._checked = f", held-out IoU {iou:.3f} at step {step}"
        self.set_status(f"Step {step}/{total}, loss {loss:.3f}{self._checked}")

    def _on_finished(self, result: FinetuneResult | None) -> None:
        if not self._closed:
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
        if result is None:  # failed: `failure` said why
            return
        self.result = result
        if result.cancelled:
            self.set_status(
                f"Cancelled after {result.steps_done} of {result.steps} steps; nothing saved."
            )
            return
        text = f"{result.summary()} It is now a model choice of Segment Anything."
        self.set_status(text)
        notify(f"{self.name}: {text}", "info" if result.improved else "warning")
        if not self._closed:
            self.refresh_model_choices()
        for widget in main_widgets(self.viewer):
            widget.refresh_model_choices(select=str(result.path))

    def cancel(self) -> None:
        """Stop fine-tuning after the current step; nothing is saved."""
        if self.busy:
            super().cancel()
            self.set_status("Cancelling after the current step...")


def _row(*buttons) -> QHBoxLayout:
    row = QHBoxLayout()
    for button in buttons:
        row.addWidget(button)
    return row
