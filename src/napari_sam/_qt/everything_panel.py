"""The "Segment everything" panel of the Segment Anything widget: automatic masks for
the 2D view on screen, or for every slice of nD data, into a new Labels layer.

Kept apart from `_widget.py`, which it uses through a few of the widget's methods (the
view on screen, its image, the model, the output layer).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..view import ViewSpec

if TYPE_CHECKING:
    from .sam_widget import SamWidget

class SegmentEverythingPanel(QWidget):
    """Button, "every slice" option and the filters, shown on "advanced settings"."""

    def __init__(self, sam: SamWidget) -> None:
        super().__init__()
        self.sam = sam
        self._worker = None
        self._progress = None
        self.result_layer = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Segment everything")
        self.run_button.setToolTip("Automatic masks from a grid of points, into a new layer")
        self.run_button.clicked.connect(self.run)
        self.all_slices_check = QCheckBox("every slice")
        row.addWidget(self.run_button)
        row.addWidget(self.all_slices_check)
        layout.addLayout(row)

        # A tick box that shows the filters: a collapsed group box would stay an empty frame.
        self.advanced_check = QCheckBox("advanced settings")
        layout.addWidget(self.advanced_check)
        self.advanced = QWidget()
        form = QFormLayout(self.advanced)
        form.setContentsMargins(0, 0, 0, 0)
        from ..automatic import MICROSCOPY_DEFAULTS

        self.points_spin = QSpinBox(minimum=1, maximum=128)
        self.points_spin.setValue(MICROSCOPY_DEFAULTS["points_per_side"])
        self.iou_spin = self._fraction(MICROSCOPY_DEFAULTS["pred_iou_thresh"])
        self.stability_spin = self._fraction(MICROSCOPY_DEFAULTS["stability_score_thresh"])
        self.nms_spin = self._fraction(MICROSCOPY_DEFAULTS["box_nms_thresh"])
        self.area_spin = QSpinBox(minimum=0, maximum=1_000_000)
        self.area_spin.setValue(MICROSCOPY_DEFAULTS["min_mask_region_area"])
        self._fields = {
            "points per side": self.points_spin,
            "predicted IoU >": self.iou_spin,
            "stability >=": self.stability_spin,
            "overlap (NMS) <": self.nms_spin,
            "min. area (px)": self.area_spin,
        }
        for label, field in self._fields.items():
            form.addRow(label, field)
        self.advanced_check.toggled.connect(self.advanced.setVisible)
        self.advanced.setVisible(False)
        layout.addWidget(self.advanced)

    @staticmethod
    def _fraction(value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.01, decimals=2)
        spin.setValue(value)
        return spin

    def parameters(self) -> dict:
        return {
            "points_per_side": self.points_spin.value(),
            "pred_iou_thresh": self.iou_spin.value(),
            "stability_score_thresh": self.stability_spin.value(),
            "box_nms_thresh": self.nms_spin.value(),
            "min_mask_region_area": self.area_spin.value(),
        }

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def cancel(self) -> None:
        if self._progress is not None:
            self._progress.cancel()

    # -- running ---------------------------------------------------------------------
    def _views(self, layer, current: ViewSpec) -> list[ViewSpec]:
        """The view on screen, or every combination of the non-displayed axes (the
        channel axis, when channels are picked, stays where it is)."""
        if not self.all_slices_check.isChecked():
            return [current]
        channel_axis = self.sam._channel_axis(layer)
        shape = self.sam._spatial_shape(layer)
        axes = [a for a in current.slice_index if a != channel_axis]
        ranges = [range(shape[a]) for a in axes]
        views = []
        for combo in itertools.product(*ranges):
            index = dict(current.slice_index)
            index.update(zip(axes, combo, strict=True))
            views.append(ViewSpec(current.displayed, index))
        return views

    def run(self, wait: bool = False):
        """Segment the view on screen (or every slice) into a new Labels layer; returns
        that layer when `wait` (None if there was nothing to do or it was cancelled)."""
        from .._messages import UserError as _UserError

        try:
            self._start()
        except (_UserError, ValueError) as error:
            self.sam._user_error(error)
            return None
        if wait:
            self.sam._wait_for(lambda: self._worker is None)
            return self.result_layer
        return None

    def _start(self) -> None:
        from napari.utils import cancelable_progress

        from ._workers import start_worker
        from ..automatic import AutomaticMaskGenerator

        if self._worker is not None:
            return
        model = self.sam._require_ready()
        if model is None:
            return
        layer = self.sam._image_layer
        views = self._views(layer, self.sam._view_spec(layer))
        # Checked here, in the GUI thread, so bad settings become a message at once.
        generator = AutomaticMaskGenerator(model, **self.parameters())
        read = self.sam.view_reader(layer)  # planes are read in the worker, one at a time
        model_id = self.sam._model_id
        sam = self.sam
        ndim = len(self.sam._spatial_shape(layer))
        progress = cancelable_progress(total=len(views), desc="SAM: segment everything")
        self._progress = progress
        # The result layer exists from the start and fills plane by plane: the viewer
        # shows progress, and the GUI thread never holds more than one plane's work.
        result = self._new_result_layer(layer)

        def cancelled() -> bool:
            return progress.is_canceled

        def work():
            from ..automatic import GenerationCancelled, masks_to_labels
            from ..embeddings import fingerprint
            from ..predictor import embed_image
            from ..view import mask_indices

            next_id = 1
            for done, view in enumerate(views, start=1):
                if cancelled():
                    return None
                image, where = read(view)
                key = (fingerprint(image), where, model_id)
                embedding = sam.embedding_for(key)
                if embedding is None:  # computed here, and kept for the clicks to come
                    embedding = embed_image(model, image)
                    sam.cache.put(key, embedding)
                try:
                    records = generator.generate(image, embedding=embedding, cancelled=cancelled)
                except GenerationCancelled:
                    return None
                plane = masks_to_labels(records, image.shape[:2])
                found = plane > 0
                indices = mask_indices(found, view.displayed, view.slice_index, ndim)
                yield done, indices, plane[found] + (next_id - 1)
                next_id += int(plane.max(initial=0))
            return next_id - 1

        def write(step) -> None:
            done, indices, values = step
            result.data[indices] = values
            result.refresh()
            progress.update(done - progress.n)

        self._worker = start_worker(
            work,
            yielded=write,
            returned=lambda count: self._finish(result, count),
            errored=lambda error: self._fail(result, error),
            finished=self._finished,
        )
        self.run_button.setEnabled(False)
        self.sam._set_status("Segmenting everything...")

    def _new_result_layer(self, image_layer):
        from napari.layers import Labels

        from .sam_widget import _transform_kwargs

        shape = self.sam._spatial_shape(image_layer)
        layer = Labels(np.zeros(shape, np.int32), name=f"{image_layer.name} everything",
                       **_transform_kwargs(image_layer))  # fmt: skip
        active = self.sam.viewer.layers.selection.active
        self.sam.viewer.add_layer(layer)
        if active is not None and active in self.sam.viewer.layers:
            self.sam.viewer.layers.selection.active = active
        return layer

    def _discard(self, layer) -> None:
        if layer in self.sam.viewer.layers:
            self.sam.viewer.layers.remove(layer)

    def _fail(self, layer, error: Exception) -> None:
        self._discard(layer)
        self.sam._user_error(error)

    def _finish(self, layer, count: int | None) -> None:
        from .._messages import notify as _notify

        if count is None:
            self._discard(layer)
            self.sam._set_status("Segment everything cancelled.")
            return
        self.result_layer = layer
        # Clicks committed afterwards land in this layer, with ids above the automatic ones.
        self.sam.output_layer = layer
        if count == 0:
            _notify("Segment everything found no objects; try lower thresholds under "
                    "'advanced'.", "info")  # fmt: skip
        self.sam._set_status(f"Segment everything: {count} objects.")

    def _finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
        self._progress = None
        self._worker = None
        self.run_button.setEnabled(True)
