"""The "Segment Anything" dock widget: click on an object, see its mask, commit it as a label.

A view over one `AnnotationSession` (the Qt-free loop: model, embedding, prompts,
candidates, commit planning): this module only tracks napari layers, runs the model load
and the image encoder as jobs in worker threads, and shows the session's state (preview,
picker, status). The decoder (milliseconds) runs in the GUI thread on every prompt change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer

from ..embeddings import EmbeddingCache
from ..interactive.embedded_view import make_view_reader
from ..interactive.session import AnnotationSession
from ..view import ViewSpec
from ._base import DockWidget, UserError
from ._choices import LOCAL_FILE, ask_checkpoint, device_choices, fill_combo, model_choices
from ._layers import (
    add_quietly,
    layer_types,
    spatial_shape,
    transform_kwargs,
    view_on_screen,
)
from .commit_to_layer import commit_to_layer
from .encoder import Encoder
from .keys import KeyBindings
from .layer_tracking import LayerTracking
from .model_loader import ModelLoader
from .picker import CandidatePicker
from .preview import Preview
from .prompt_layers import PromptLayers
from .sam_controls import build_controls, show_channels_row, view_options

if TYPE_CHECKING:
    import napari

__all__ = ["SamWidget"]


class SamWidget(LayerTracking, CandidatePicker, DockWidget):
    """Segment Anything in napari. Scripting:

    >>> widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler", "Segment Anything")[1]
    >>> widget.set_model("vit_b_lm")           # a zoo name, a checkpoint path or a Sam
    >>> widget.compute_embedding(wait=True)
    >>> widget.points_layer.add([[120, 80]])   # a positive point, in the layer's data frame
    >>> widget.select("part")
    >>> widget.commit()

    `widget.session` is the `AnnotationSession` it shows (one per widget).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.session = AnnotationSession(cache=EmbeddingCache())
        self.loader = ModelLoader(self, self._use_model)
        self.prompts = PromptLayers(self.viewer, self.update_prediction, self._on_polarity)
        self.preview = Preview(self.viewer)
        self.encoder = Encoder(self, self.session, self.schedule_update)
        self.model_name = ""
        self.last_decode_seconds = 0.0
        self._image_layer = None
        self._output_layer = None
        self._outputs_by_image: list[tuple] = []  # (image layer, its output layer)
        self._prediction_view: ViewSpec | None = None
        self._prediction_point: tuple[float, ...] = ()  # viewer.dims.point of that view
        self._prompt_indices = (np.zeros(0, np.intp), np.zeros(0, np.intp))  # in the layers
        self._updating = self._update_pending = False
        self._choice_shown = False  # the status names a candidate (see _reset_prediction)
        build_controls(self)
        self.refresh_model_choices()
        fill_combo(self.device_combo, [(d, d) for d in device_choices()], "auto")
        show_channels_row(self, None)
        self.connect_event(self.viewer.layers.events.inserted, self._on_layer_inserted)
        self.connect_event(self.viewer.layers.events.removed, self._on_layer_removed)
        # The combos name layers: a renamed one must show its new name at once.
        self.connect_event(self.viewer.layers.events.renamed, self._refresh_layer_choices)
        self.connect_event(self.viewer.layers.selection.events.active, self._on_active_layer)
        for event in ("current_step", "order", "ndisplay"):
            self.connect_event(getattr(self.viewer.dims.events, event), self.schedule_update)
        self.keys = KeyBindings(self.viewer, self)
        Image = layer_types()[0]
        active = self.viewer.layers.selection.active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        if isinstance(active, Image) or images:
            self.image_layer = active if isinstance(active, Image) else images[-1]
        self._refresh_layer_choices()
        QTimer.singleShot(0, self._load_default_model)

    def _on_cleanup(self) -> None:
        self.keys.unbind()
        self.prompts.cleanup()

    @property
    def cache(self) -> EmbeddingCache:
        """The embedding cache (`cache.max_bytes` is its budget)."""
        return self.session.cache

    # -- polarity -------------------------------------------------------------------------
    @property
    def negative(self) -> bool:
        """Whether new points are negative (key N toggles; Ctrl-click adds one)."""
        return self.prompts.negative

    def toggle_polarity(self) -> None:
        """Switch new points between positive and negative (key N)."""
        self.prompts.negative = not self.prompts.negative
        self.set_status(f"New points are {'negative' if self.negative else 'positive'}.")

    def _on_negative_check(self, checked: bool) -> None:
        self.prompts.negative = checked

    def _on_polarity(self, negative: bool) -> None:
        if self.negative_check.isChecked() != negative:
            self.negative_check.setChecked(negative)

    def _on_per_box_check(self, checked: bool) -> None:
        self.session.one_object_per_box = checked
        self.schedule_update()

    def _on_tiled_check(self, checked: bool) -> None:
        self.session.tiled = checked
        self.schedule_update()

    # -- model ----------------------------------------------------------------------------
    @property
    def model(self):
        """The `Sam` in use (None until one is loaded)."""
        return self.session.model

    def set_model(self, model, device: str | None = None, dtype: str = "auto", wait: bool = True):
        """Use a model: a zoo name, a checkpoint path, or a ready `Sam` instance.

        Names and paths load in a worker thread (downloading when needed, with progress in
        the activity dock); `wait=True` returns once it is loaded and raises what went
        wrong (e.g. `ModelDownloadError` without internet). Returns the model in use."""
        from ..model import Sam

        device = device or self.device_combo.currentText() or "auto"
        if isinstance(model, Sam):
            self.loader.requested = True
            self.loader.supersede()
            self._use_model(model, getattr(model, "name", None) or type(model).__name__)
        else:
            self.loader.load(str(model), device, dtype, wait)
        return self.model

    def _use_model(self, model, name: str) -> None:
        self.encoder.cancel()
        self.session.set_model(model)
        self.model_name = name
        if getattr(self, "everything", None) is not None:
            self.everything.use_model_defaults(model)  # its grid thresholds, its method
        self._reset_prediction()
        self.set_status(f"Model {name} ready on {model.device}. Click on an object.")
        self.schedule_update()

    def _load_default_model(self) -> None:
        """Opened from the Plugins menu: load the model the combo shows, so that the first
        click works without pressing Load. Any model asked for first wins."""
        choice = self.model_combo.currentData()
        if not self.closed and not self.loader.requested and choice and choice != LOCAL_FILE:
            self.set_model(choice, wait=False)

    def _on_load_clicked(self) -> None:
        choice = self.model_combo.currentData()
        if choice == LOCAL_FILE:
            choice = ask_checkpoint(self)
        if choice:
            self.set_model(choice, wait=False)

    def refresh_model_choices(self, select: str | None = None) -> None:
        """Re-read the model choices (e.g. after fine-tuning); `select` picks one by name
        or path, else the current choice (at first the default model) stays."""
        from ..zoo import default_model

        current = select or self.model_combo.currentData() or default_model()
        fill_combo(self.model_combo, model_choices(marked=True), current)

    # -- view and embedding ---------------------------------------------------------------
    def current_view(self, layer=None) -> ViewSpec:
        """The 2D view of `layer` (default: the image) on screen: its displayed data axes
        and the index of every other axis. Raises UserError in the 3D view."""
        return view_on_screen(self.viewer, self._image_layer if layer is None else layer)

    def view_options(self) -> dict:
        """How the image's views are read: rgb, channel_axis, channels (see
        `napari_sam.view.extract_view`). Raises UserError for a bad channel choice."""
        return view_options(self, self._image_layer)

    def view_reader(self):
        """A function `read(view) -> (pixels, where)` for the image with the channel
        choice made now; it reads no widget state, so a worker thread may call it."""
        layer = self._image_layer
        return make_view_reader(layer.data[0] if layer.multiscale else layer.data,
                                **self.view_options())  # fmt: skip

    def _on_view_options(self, *_args) -> None:
        self.session.forget_pixels()
        self._reset_prediction()
        self.schedule_update()

    def _sync_session(self) -> ViewSpec:
        """Point the session at the view on screen; returns that view."""
        layer = self._image_layer
        view = self.current_view(layer)
        try:
            self.session.set_image(layer.data[0] if layer.multiscale else layer.data, view,
                                   **self.view_options())  # fmt: skip
        except (ValueError, IndexError) as error:
            raise UserError(str(error)) from None
        self.propagation.refresh_axes()
        return view

    def _ready(self) -> bool:
        if self.closed:
            return False
        if self._image_layer is None or self._image_layer not in self.viewer.layers:
            self.set_status("Open or choose an image layer.")
            return False
        if self.model is None:
            self.set_status("Load a model (Load button), then click on an object.")
            return False
        return True

    def compute_embedding(self, wait: bool = True) -> bool:
        """Embed the 2D view on screen (in a worker); `wait=True` returns when done.
        Returns True when the embedding is ready."""
        try:
            if not self._ready():
                return False
            self._sync_session()
            if not self.session.has_embedding:
                self.encoder.start(self.view_options())
                if wait:
                    self.wait_for(lambda: not self.encoder.busy)
            return self.session.has_embedding
        except UserError as error:
            self.user_error(error)
            return False

    def segment_everything(self, wait: bool = True):
        """Automatic masks for the view on screen (or every slice, with the panel's
        option) into a new Labels layer, which later commits also go to. Returns that
        layer when `wait`."""
        return self.everything.run(wait=wait)

    def update_busy(self) -> None:
        if not self.closed:
            self.cancel_button.setEnabled(self.busy)

    # -- prompts -> candidates -> preview ---------------------------------------------------
    def schedule_update(self, event=None) -> None:
        """Decode once after the current batch of events (slicing emits several)."""
        if not self.closed and not self._update_pending:
            self._update_pending = True
            QTimer.singleShot(0, self._run_scheduled_update)

    def _run_scheduled_update(self) -> None:
        self._update_pending = False
        self.update_prediction()

    def update_prediction(self) -> None:
        """Decode the current prompts and show the candidates; starts the image encoder
        first when the view has no embedding yet."""
        if self._updating or not self._ready():
            return
        self._updating = True
        try:
            self._update_prediction()
        except (UserError, ValueError) as error:
            if self.viewer.dims.ndisplay != 2:  # looking at a result in 3D: no warning
                self.set_status(f"Segment Anything: {error}")
            else:
                self.user_error(error)
        finally:
            self._updating = False

    def _update_prediction(self) -> None:
        view = self._sync_session()
        points, boxes = self.prompts.gather(self._image_layer, view, self.viewer.dims.point)
        self.session.set_prompts(points.coords, points.labels, boxes.boxes)
        self._prompt_indices = (points.indices, boxes.indices)
        if not self.session.has_prompts:
            self._reset_prediction()
            return
        if not self.session.has_embedding:
            self.encoder.start(self.view_options())
            return
        candidates = self.session.candidates
        self.last_decode_seconds = self.session.last_decode_seconds
        self._prediction_view, self._prediction_point = view, tuple(self.viewer.dims.point)
        if self.session.one_object_per_box and len(boxes.boxes):
            self.set_status(f"{len(candidates)} objects, one per box: commit to keep them all.")
        elif len(boxes.boxes) > 1:
            self.set_status(
                "Several boxes: the last one is used (tick 'one object per box' for all)."
            )
        else:
            self._show_choice()
        self._show_candidates()

    def _reset_prediction(self) -> None:
        self._prediction_view = None
        self.session.clear()
        self._show_candidates()
        if self._choice_shown:  # the status no longer names a candidate
            self._choice_shown = False
            self.set_status("")

    # -- commit / clear ---------------------------------------------------------------------
    @property
    def output_layer(self):
        """The Labels layer commits on the current image go to (None until its first
        commit creates "<image> labels"; each image keeps its own)."""
        if self._output_layer is not None and self._output_layer not in self.viewer.layers:
            self._output_layer = None
        return self._output_layer

    @output_layer.setter
    def output_layer(self, layer) -> None:
        self._output_layer = layer
        self._refresh_layer_choices()

    def _ensure_output(self):
        if self.output_layer is None:
            from napari.layers import Labels

            image = self._image_layer
            layer = Labels(np.zeros(spatial_shape(image), np.int32),
                           name=f"{image.name} labels", **transform_kwargs(image))  # fmt: skip
            self._output_layer = add_quietly(self.viewer, layer)
            self._refresh_layer_choices()
        return self._output_layer

    def commit(self) -> list[int]:
        """Write the chosen mask (or, one object per box, every box's mask) into the output
        layer with new label ids, as one undoable step; then drop the prompts used.

        The mask lands under the object in world space: it is resampled (nearest
        neighbour) into the output layer's frame when that differs from the image's.
        Nothing is written when the commit cannot be done whole (an output layer that
        cannot be edited in place, ids that would not fit its dtype, frames tilted
        against each other); the prompts are then kept. Returns the ids written."""
        try:
            return self._commit()
        except UserError as error:
            self.user_error(error)
            return []

    def _commit(self) -> list[int]:
        session = self.session
        if session.propagation is not None and not session.propagation_on_this_image \
                and not self.candidates:  # fmt: skip
            raise UserError("The propagation was made on another image: select that image "
                            "to commit it, or press Q to drop it.")
        if session.propagation_on_this_image and session.propagation.objects:
            if self.session.has_prompts:
                raise UserError("Press J to apply the correction to the propagation first, "
                                "or Q to drop the new prompts.")  # fmt: skip
            ids = self.propagation.commit(self._ensure_output(), self.overwrite_check.isChecked(),
                                          tuple(self.viewer.dims.point))  # fmt: skip
            self.set_status(f"Committed label {', '.join(map(str, ids))} through the stack."
                            if ids else "Nothing written: every pixel is labelled already.")
            return ids
        if not self.candidates:
            if self.session.has_prompts and self.encoder.busy:
                raise UserError("The embedding is still being computed: commit once the "
                                "mask shows.")  # fmt: skip
            raise UserError("Nothing to commit: click on an object first.")
        ids = commit_to_layer(self.session, self._image_layer, self.output_layer,
                              self._ensure_output, self.overwrite_check.isChecked(),
                              self._prediction_point)  # fmt: skip
        points, boxes = self.session.used_prompts
        used = (self._prompt_indices[0][points], self._prompt_indices[1][boxes])
        self._reset_prediction()
        self.prompts.remove(*used)
        self.set_status(f"Committed label {', '.join(map(str, ids))}." if ids else "")
        return ids

    # -- volumes and time-lapses -------------------------------------------------------------
    def propagate(self, wait: bool = False):
        """Propagate the selected mask through the stack (key J), or apply the prompts
        on a propagated slice as its correction; see `PropagationPanel`."""
        return self.propagation.propagate(wait)

    def divide(self, wait: bool = False):
        """Divide the tracked object under the positive points (key H)."""
        return self.propagation.divide(wait)

    def prepare_prompts(self, wait: bool = False) -> bool:
        """Decode the prompts on screen now (with `wait`, after the view's embedding);
        False (with a status) while that embedding is still being computed."""
        self._update_prediction()
        if self.session.has_prompts and not self.session.has_embedding:
            if wait and self.compute_embedding(wait=True):
                self._update_prediction()
                return True
            self.set_status("Computing the embedding of this slice; press again when done.")
            return False
        return True

    def prompts_consumed(self, used) -> None:
        """Remove the prompts a propagation used (session indices) from their layers."""
        points, boxes = used
        self.prompts.remove(self._prompt_indices[0][points], self._prompt_indices[1][boxes])
        self._reset_prediction()

    def clear(self) -> None:
        """Drop all prompts and the preview; with no prompts, the propagation."""
        if not self.session.has_prompts:
            self.propagation.clear()
        self._reset_prediction()
        self.prompts.remove_all()
        self._reset_prediction()
        self.set_status("Cleared.")
