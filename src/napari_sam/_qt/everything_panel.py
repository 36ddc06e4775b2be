"""The "Segment everything" panel of the Segment Anything widget: automatic masks for
the 2D view on screen, or for every slice of nD data, into a new Labels layer; the
objects of every slice optionally linked into 3D objects
(`napari_sam.volume.linking.link_slices`).

The work is `napari_sam.automatic.segment_slices` (Qt-free), run as a `Job` of the widget
it belongs to. Under "advanced settings": the method ("auto" is the model's instance head
where it has one, else the grid) and a magicgui form of each method's parameters. The
view on screen is decoded once (`EverythingSegmenter`): changing a threshold afterwards
re-labels it at once, in place while the result layer is as the panel wrote it (a layer
the user edited is never overwritten: a new one is made). It uses the widget's public API
only (image layer, view, model, session cache, output layer).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
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


def _ais_form() -> Container:
    """The instance head's post-processing parameters (`AIS_DEFAULTS`, `AIS_HELP`)."""
    from ..automatic import AIS_DEFAULTS as d
    from ..automatic import AIS_HELP as why

    def fraction(name: str, label: str) -> FloatSpinBox:
        return FloatSpinBox(name=name, label=label, value=d[name], min=0.0, max=1.0,
                            step=0.05, tooltip=why[name])  # fmt: skip

    return Container(widgets=[
        fraction("center_distance_threshold", "centre distance <"),
        fraction("boundary_distance_threshold", "boundary distance <"),
        fraction("foreground_threshold", "foreground >"),
        SpinBox(name="min_size", label="min. size (px)", value=d["min_size"], min=0,
                max=1_000_000, tooltip=why["min_size"]),
    ])  # fmt: skip


METHOD_TOOLTIP = (
    "auto: the model's instance segmentation head (AIS) where it has one, else the grid\n"
    "ais: a dense head predicts object centres and boundaries; a watershed separates\n"
    "     them (fast, made for cells and nuclei; needs a model with a head)\n"
    "amg: SAM's grid of point prompts, filtered and de-duplicated (any model)"
)


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
        layout.addWidget(self.advanced.native)
        self.method = ComboBox(label="method", choices=["auto", "ais", "amg"], value="auto",
                               tooltip=METHOD_TOOLTIP)  # fmt: skip
        self.ais_settings = _ais_form()
        self.method_row = Container(widgets=[self.method], labels=True)
        for form in (self.method_row, self.settings, self.ais_settings):
            form.visible = False
            layout.addWidget(form.native)
        self.advanced.changed.connect(lambda _: self.show_forms())
        self.method.changed.connect(lambda _: self.show_forms())
        # Decode once, label many times: the last single view's decoded state.
        self.decoded = None  # (segmenter, view key, result layer, labels written)
        self._thinned = ""  # the status's note when the grid was thinned to the view
        for form in (self.settings, self.ais_settings):
            form.changed.connect(lambda _: self.relabel())

    def use_model_defaults(self, model) -> None:
        """A new model: its thresholds (`grid_defaults`, `ais_defaults`) in the forms, its
        method for "auto"; the last decoded view belonged to the old model."""
        from ..automatic import ais_defaults, grid_defaults

        self.decoded = None
        for form, values in ((self.settings, grid_defaults(model)),
                             (self.ais_settings, ais_defaults(model))):  # fmt: skip
            for widget in form:
                if widget.name in values:
                    widget.value = values[widget.name]
        self.show_forms()

    def effective_method(self) -> str:
        """"ais" or "amg": the choice, with "auto" resolved for the loaded model."""
        from ..automatic import has_instance_head

        if self.method.value != "auto":
            return self.method.value
        model = self.sam.model
        return "ais" if model is not None and has_instance_head(model) else "amg"

    def show_forms(self) -> None:
        shown, ais = self.advanced.value, self.effective_method() == "ais"
        self.method_row.visible = shown
        self.settings.visible = shown and not ais
        self.ais_settings.visible = shown and ais

    def parameters(self) -> dict:
        """The chosen method's keyword arguments, as its form shows them."""
        form = self.ais_settings if self.effective_method() == "ais" else self.settings
        return {widget.name: widget.value for widget in form}

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

    def relabel(self) -> bool:
        """Re-label the last single view from its decoded state with the form's values
        (milliseconds; the grid's points per side needs a new run). Only while the
        result layer is as the panel wrote it; True when it was re-labelled."""
        if self.decoded is None or self.job is not None:
            return False
        segmenter, plane_index, layer, written = self.decoded
        if layer not in self.sam.viewer.layers or segmenter.model is not self.sam.model:
            self.decoded = None
            return False
        params = self.parameters()
        grid = _fitted_grid(params, segmenter.image_shape, segmenter.model).get("points_per_side")
        if segmenter.method != self.effective_method() or (
            grid != segmenter.params.get("points_per_side")
        ):
            return False  # another method or grid: that needs a run
        if not np.array_equal(layer.data[plane_index], written.ravel()):
            # Kept, not forgotten: after an undo the layer is as written again.
            self.sam.set_status("The result layer was edited: it is kept as it is. Undo the "
                                "edits, or press Segment everything for a new one.")  # fmt: skip
            return False
        import warnings

        from ..automatic import NoObjectsWarning
        from ..automatic.grid_pool import DECODE_PARAMS

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NoObjectsWarning)
                # The grid's points were decoded already: labels() takes the filters.
                labels = segmenter.labels(**{k: v for k, v in params.items()
                                             if k not in DECODE_PARAMS})  # fmt: skip
        except ValueError as error:
            self.sam.user_error(error)
            return False
        layer.data[plane_index] = labels.ravel()
        layer.refresh()
        self.decoded = (segmenter, plane_index, layer, labels.ravel())
        why = f" {caught[0].message}" if caught else ""
        self.sam.set_status(f"Segment everything: {int(labels.max(initial=0))} objects.{why}")
        return True

    def _start(self) -> None:
        from ..automatic import (
            AutomaticMaskGenerator,
            EverythingSegmenter,
            GenerationCancelled,
            segment_slices,
        )

        sam = self.sam
        if self.job is not None or sam.model is None or sam.image_layer is None:
            if sam.model is None:
                sam.set_status("Load a model (Load button), then click on an object.")
            return
        layer = sam.image_layer
        current = sam.current_view()
        views, link_axis = self.views(current), self.link_axis(current)
        # Made here, in the GUI thread, so bad settings become a message at once. The
        # grid over every slice runs direct (faster); a single view is decoded once.
        method, params = self.effective_method(), self.parameters()
        view_shape = tuple(spatial_shape(layer)[a] for a in current.displayed)
        self._thinned = ""
        fitted = _fitted_grid(params, view_shape, sam.model) if method == "amg" else params
        if fitted != params:
            params = fitted
            self._thinned = (f" The grid was thinned to {params['points_per_side']} points "
                             f"per side: the view is {view_shape[0]} x {view_shape[1]} px.")
        if method == "amg" and len(views) > 1:
            generator = AutomaticMaskGenerator(sam.model, **params)
        else:
            generator = EverythingSegmenter(sam.model, method, **params)
        self.decoded = None
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
            returned=lambda _: self._finish(result, generator, views, layer),
            errored=lambda e: self._fail(result, e),
            finished=finished,
        )  # fmt: skip
        self.run_button.setEnabled(False)
        sam.set_status("Segmenting everything...")

    def _new_result_layer(self, image_layer):
        self.decoded = None
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

    def _finish(self, layer, generator, views, image_layer) -> None:
        from ..automatic import EverythingSegmenter, GridCandidates

        count = int(np.max(layer.data, initial=0))
        self.result_layer = layer
        # Clicks committed afterwards on this image land in this layer, with ids above the
        # automatic ones (the user may have moved to another image meanwhile).
        self.sam.set_output_for(image_layer, layer)
        if isinstance(generator, EverythingSegmenter) and len(views) == 1:
            view = views[0]
            plane = _plane_index(view, layer.data.shape, layer.data.ndim)
            self.decoded = (generator, plane, layer, layer.data[plane])
        if count == 0:  # which filter removed everything, with the scores seen (last slice)
            if not isinstance(generator, EverythingSegmenter):
                why = generator.last_report.why_empty(generator.pred_iou_thresh,
                                                      generator.stability_score_thresh)
            elif isinstance(generator.decoded, GridCandidates):
                why = generator.decoded.why_empty(**{
                    k: v for k, v in self.parameters().items() if k != "points_per_side"})
            else:
                why = ("The instance head found no foreground: lower 'foreground >' "
                       "or 'min. size'.")
            notify(f"Segment everything found no objects. {why} (under 'advanced "
                   "settings')", "info")  # fmt: skip
        self.sam.set_status(f"Segment everything: {count} objects.{self._thinned}")


def _fitted_grid(params: dict, shape: tuple[int, int], model) -> dict:
    """The form's grid parameters for a view of `shape`: the model's default points per
    side is thinned for a thinner view by `grid_params`' rule; a number the user chose
    is kept (the generator refuses it when denser than the view)."""
    from ..automatic import grid_defaults
    from ..automatic.everything import grid_params

    if params.get("points_per_side") != grid_defaults(model)["points_per_side"]:
        return params
    rest = {k: v for k, v in params.items() if k != "points_per_side"}
    return {**params, "points_per_side": grid_params(model, rest, shape)["points_per_side"]}


def _plane_index(view: ViewSpec, shape: tuple[int, ...], ndim: int) -> tuple:
    """Fancy indices of a 2D view's pixels (row-major, in the view's (row, col) order)
    in nD labels, for reading and writing that plane whatever the displayed axes."""
    from ..view import mask_indices

    plane = (shape[view.displayed[0]], shape[view.displayed[1]])
    return mask_indices(np.ones(plane, bool), view.displayed, view.slice_index, ndim)
