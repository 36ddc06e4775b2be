"""The "Segment everything" panel of the Segment Anything widget: automatic masks for
the 2D view on screen, or for every slice of nD data, into a new Labels layer; the
objects of every slice optionally linked into 3D objects
(`napari_sam.volume.linking.link_slices`).

The work is `napari_sam.automatic.segment_slices` (Qt-free), run as a `Job` of the widget
it belongs to; the filters are a magicgui form of the generator's parameters. It uses the
widget's public API only (image layer, view, model, session cache, output layer).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, SpinBox
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ..view import ViewSpec
from ._base import OneJobAtATime, UserError
from ._layers import add_quietly, spatial_shape, transform_kwargs
from ._messages import notify

if TYPE_CHECKING:
    from .sam_widget import SamWidget

__all__ = ["SegmentEverythingPanel"]

LINK_TOOLTIP = (
    "After every slice is segmented, an object takes the id of the object it overlaps\n"
    "(IoU >= 0.5, one to one) in the slice before, along the sliced axis nearest the\n"
    "displayed ones: z of (Z, Y, X) data; of (T, Z, Y, X) data z too, every t on its own."
)


def _settings_form() -> Container:
    """The grid generator's filters (`AutomaticMaskGenerator` parameters), at the
    microscopy defaults."""
    from ..automatic import MICROSCOPY_DEFAULTS as d

    def fraction(name: str, label: str) -> FloatSpinBox:
        return FloatSpinBox(name=name, label=label, value=d[name], min=0.0, max=1.0, step=0.01)

    return Container(widgets=[
        SpinBox(name="points_per_side", label="points per side", value=d["points_per_side"],
                min=1, max=128, tooltip="The grid of point prompts: n x n points"),
        fraction("pred_iou_thresh", "predicted IoU >"),
        fraction("stability_score_thresh", "stability >="),
        fraction("box_nms_thresh", "overlap (NMS) <"),
        SpinBox(name="min_mask_region_area", label="min. area (px)",
                value=d["min_mask_region_area"], min=0, max=1_000_000),
    ])  # fmt: skip


class _SessionEmbeddings:
    """The session's embeddings as a cache: its current view's first, then its cache."""

    def __init__(self, session) -> None:
        self.session = session

    def get(self, key, default=None):
        found = self.session.embedding_for(key)
        return default if found is None else found

    def put(self, key, embedding) -> bool:
        return self.session.cache.put(key, embedding)


class SegmentEverythingPanel(OneJobAtATime, QWidget):
    """Button, "every slice" option and the filters, shown on "advanced settings"."""

    def __init__(self, sam: SamWidget) -> None:
        super().__init__()
        self.sam = sam
        self.job = None
        self.result_layer = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Segment everything")
        self.run_button.setToolTip("Automatic masks from a grid of points, into a new layer")
        self.run_button.clicked.connect(lambda: self.run())
        self.every_slice = CheckBox(text="every slice")
        self.link_slices = CheckBox(text="link slices into 3D objects", enabled=False,
                                    tooltip=LINK_TOOLTIP)  # fmt: skip
        self.every_slice.changed.connect(lambda on: setattr(self.link_slices, "enabled", on))
        row.addWidget(self.run_button)
        row.addWidget(self.every_slice.native)
        row.addWidget(self.link_slices.native)
        layout.addLayout(row)
        # A tick box that shows the filters: a collapsed group box would stay an empty frame.
        self.advanced = CheckBox(text="advanced settings")
        self.settings = _settings_form()
        self.settings.visible = False
        self.advanced.changed.connect(lambda shown: setattr(self.settings, "visible", shown))
        layout.addWidget(self.advanced.native)
        layout.addWidget(self.settings.native)

    def parameters(self) -> dict:
        """The generator's keyword arguments, as the form shows them."""
        return {widget.name: widget.value for widget in self.settings}

    def views(self, current: ViewSpec) -> list[ViewSpec]:
        """The view on screen, or with "every slice" every combination of the other axes
        (the channel axis, when channels are picked, stays where it is)."""
        if not self.every_slice.value:
            return [current]
        channel_axis = self.sam.view_options()["channel_axis"]
        shape = spatial_shape(self.sam.image_layer)
        axes = [a for a in current.slice_index if a != channel_axis]
        views = []
        for combo in itertools.product(*(range(shape[a]) for a in axes)):
            index = {**current.slice_index, **dict(zip(axes, combo, strict=True))}
            views.append(ViewSpec(current.displayed, index))
        return views

    def link_axis(self, current: ViewSpec) -> int | None:
        """The axis the slices' objects are linked along: with "every slice" and "link
        slices" ticked, the sliced axis (longer than 1, not the channel axis) nearest the
        displayed ones, the later one on a tie (z of (T, Z, Y, X)); else None."""
        if not (self.every_slice.value and self.link_slices.value):
            return None
        channel_axis = self.sam.view_options()["channel_axis"]
        shape = spatial_shape(self.sam.image_layer)
        sliced = [a for a in current.slice_index if a != channel_axis and shape[a] > 1]
        if not sliced:
            return None
        return min(sliced, key=lambda a: (min(abs(a - d) for d in current.displayed), -a))

    def run(self, wait: bool = False):
        """Segment the view on screen (or every slice) into a new Labels layer; returns
        that layer when `wait` (None if there was nothing to do or it was cancelled)."""
        try:
            self._start()
        except (UserError, ValueError) as error:
            self.sam.user_error(error)
            return None
        if wait:
            self.sam.wait_for(lambda: self.job is None)
            return self.result_layer
        return None

    def _start(self) -> None:
        from ..automatic import AutomaticMaskGenerator, GenerationCancelled, segment_slices

        sam = self.sam
        if self.job is not None or sam.model is None or sam.image_layer is None:
            if sam.model is None:
                sam.set_status("Load a model (Load button), then click on an object.")
            return
        layer = sam.image_layer
        current = sam.current_view()
        views, link_axis = self.views(current), self.link_axis(current)
        # Made here, in the GUI thread, so bad settings become a message at once.
        generator = AutomaticMaskGenerator(sam.model, **self.parameters())
        session, shape = sam.session, spatial_shape(layer)
        ndim = len(shape)
        # The view on screen keeps its embedding whatever the cache's budget: use it too.
        running: list = []  # the job, once its worker runs the loop
        slices = segment_slices(
            generator,
            sam.view_reader(),
            views,
            cache=_SessionEmbeddings(session),
            model_id=session.model_id,
            cancelled=lambda: running[0].cancelled,
        )  # checks its arguments now, in the GUI thread
        # The result layer exists from the start and fills plane by plane: the viewer
        # shows progress, and the GUI thread never holds more than one plane's work.
        result = add_quietly(sam.viewer, self._new_result_layer(layer))

        def work(job):
            from ..view import mask_indices

            running.append(job)
            # Linking needs every slice at once: the worker keeps its own copy.
            linked = None if link_axis is None else np.zeros(shape, np.int32)
            try:
                for step in slices:
                    found, view = step.labels > 0, step.view
                    indices = mask_indices(found, view.displayed, view.slice_index, ndim)
                    yield indices, step.labels[found]
                    if linked is not None:
                        linked[indices] = step.labels[found]
                    job.report(step.index + 1)
            except GenerationCancelled:
                job.check()
            if linked is not None:
                from ..volume.linking import link_slices

                job.set_description("SAM: linking slices into 3D objects")
                linked = link_slices(linked, link_axis, plane_axes=current.displayed)
                job.check()
                yield Ellipsis, linked  # the whole layer: one copy in the GUI thread

        def write(step) -> None:
            indices, values = step
            result.data[indices] = values
            result.refresh()

        def finished() -> None:
            if sam.closed:  # the viewer went away meanwhile
                self.job = None
                return
            if self.job is not None and self.job.cancelled:
                self._discard(result)
                sam.set_status("Segment everything cancelled.")
            self.job = None
            self.run_button.setEnabled(True)

        self.job = sam.start_job(
            work, "SAM: segment everything", len(views), yielded=write,
            returned=lambda _: self._finish(result, generator),
            errored=lambda e: self._fail(result, e),
            finished=finished,
        )  # fmt: skip
        self.run_button.setEnabled(False)
        sam.set_status("Segmenting everything...")

    def _new_result_layer(self, image_layer):
        from napari.layers import Labels

        shape = spatial_shape(image_layer)
        return Labels(np.zeros(shape, np.int32), name=f"{image_layer.name} everything",
                      **transform_kwargs(image_layer))  # fmt: skip

    def _discard(self, layer) -> None:
        if layer in self.sam.viewer.layers:
            self.sam.viewer.layers.remove(layer)

    def _fail(self, layer, error: Exception) -> None:
        self._discard(layer)
        self.sam.user_error(error)

    def _finish(self, layer, generator) -> None:
        count = int(np.max(layer.data, initial=0))
        self.result_layer = layer
        # Clicks committed afterwards land in this layer, with ids above the automatic ones.
        self.sam.output_layer = layer
        if count == 0:  # which filter removed everything, with the scores seen (last slice)
            why = generator.last_report.why_empty(generator.pred_iou_thresh,
                                                  generator.stability_score_thresh)  # fmt: skip
            notify(f"Segment everything found no objects. {why} (under 'advanced "
                   "settings')", "info")  # fmt: skip
        self.sam.set_status(f"Segment everything: {count} objects.")
