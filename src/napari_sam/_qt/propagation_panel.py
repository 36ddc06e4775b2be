"""The "Propagate" row of the Segment Anything widget: carry the selected mask through a
z-stack or a time-lapse, correct it on any slice, divide a tracked object, commit every
object with one label id as one undoable step, export the lineage.

The work is the session's (`AnnotationSession.plan_propagation`, Qt-free); the engine runs
in a worker `Job` (embeddings of the slices it reaches, then decoding), and the result is
shown in a "SAM propagation" Labels layer (object k drawn with value k + 1) until it is
committed or cleared (then the layer is emptied and hidden, for the next one). Uses the
main widget's public API only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..view import mask_indices
from ._base import OneJobAtATime, UserError
from ._layers import add_quietly, data_to_world, describe_frame, spatial_shape, transform_kwargs
from ._messages import notify

if TYPE_CHECKING:
    from .sam_widget import SamWidget

__all__ = ["PROPAGATION_LAYER", "PropagationPanel"]

PROPAGATION_LAYER = "SAM propagation"
# Below this IoU between a click's mask in its tile and the whole-view version that
# propagation starts from, the status says the mask propagated is not the one shown.
SEED_AGREEMENT_NOTED = 0.8


class PropagationPanel(OneJobAtATime, QWidget):
    """Propagate [J] / Divide [H] buttons, the axis to go along, lineage export."""

    def __init__(self, sam: SamWidget) -> None:
        super().__init__()
        self.sam = sam
        self.job = None
        self.layer = None
        self.lineage = None  # every committed track's row: label, parent, first/last frame
        self._axes_image = None  # the unique id of the image the axis choice is for
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Propagate [J]")
        self.run_button.setToolTip("Carry the selected mask through the stack along the axis "
                                   "chosen; on a propagated slice: apply the correction")
        self.run_button.clicked.connect(lambda: self.propagate())
        self.axis_combo = QComboBox()
        self.axis_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.axis_combo.setToolTip("The axis to propagate along (z for stacks, t to track)")
        self.divide_button = QPushButton("Divide [H]")
        self.divide_button.setToolTip("Track a division: one positive point on each daughter, "
                                      "on the first frame where they are apart")
        self.divide_button.clicked.connect(lambda: self.divide())
        self.export_button = QPushButton("Lineage CSV...")
        self.export_button.setToolTip("Save the committed tracks' lineage (label, parent, "
                                      "first and last frame) as CSV")
        self.export_button.clicked.connect(self._ask_export)
        row.addWidget(self.run_button)
        row.addWidget(QLabel("along"))
        row.addWidget(self.axis_combo)
        row.addWidget(self.divide_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)

    # -- the axis ------------------------------------------------------------------------
    def refresh_axes(self) -> None:
        """List the session's sliced axes by their napari names (z, t, ...)."""
        axes = self.sam.session.propagation_axes()
        labels = self.sam.viewer.dims.axis_labels
        layer = self.sam.image_layer
        offset = self.sam.viewer.dims.ndim - (len(spatial_shape(layer)) if layer else 0)
        # napari names unnamed axes "-3", "-2", ...: those say nothing, the index does.
        names = [labels[offset + a] for a in axes]
        items = [(f"axis {a}" if name.lstrip("-").isdigit() else f"{name} (axis {a})", a)
                 for name, a in zip(names, axes, strict=True)]  # fmt: skip
        current = [(self.axis_combo.itemText(i), self.axis_combo.itemData(i))
                   for i in range(self.axis_combo.count())]  # fmt: skip
        # An axis number means another axis in another image (axis 0: z of a stack, t
        # of a time-lapse of stacks): a choice is kept for its own image only.
        image_id = None if layer is None else layer.unique_id
        same_image = image_id == self._axes_image
        self._axes_image = image_id
        if items != current or not same_image:
            chosen = self.axis_combo.currentData() if same_image else None
            self.axis_combo.clear()
            for text, axis in items:
                self.axis_combo.addItem(text, axis)
            if axes:  # keep the choice, else the axis next to the displayed ones
                self.axis_combo.setCurrentIndex(axes.index(chosen) if chosen in axes
                                                else len(axes) - 1)  # fmt: skip

    @property
    def axis(self) -> int | None:
        return self.axis_combo.currentData()

    # -- actions -------------------------------------------------------------------------
    def propagate(self, wait: bool = False) -> list | None:
        """Propagate the selected candidate (a new object, or the correction of the object
        under it) along the chosen axis in a worker; without prompts, go on with a
        propagation that was cancelled. Returns the objects when `wait`."""
        return self._start(lambda session: session.plan_propagation(self.axis), wait)

    def divide(self, wait: bool = False) -> list | None:
        """Divide the tracked object under the positive points into one daughter each,
        from this frame on, and propagate the daughters forward."""
        return self._start(lambda session: (session.divide(), session.propagation)[1], wait)

    def _whole_view_ready(self, wait: bool) -> bool:
        """Propagation decodes on whole views: a mask decoded in a tile is decoded again
        on the view's, whose embedding is computed first, in the encoder's worker."""
        sam = self.sam
        session = sam.session
        if not session.chosen_in_tiles():
            return True
        if session.embedding_for(session.embedding_key()) is not None:
            return True
        sam.encoder.start(sam.view_options(), frames=[None])
        if wait:
            sam.wait_for(lambda: not sam.encoder.busy)
            return session.embedding_for(session.embedding_key()) is not None
        sam.set_status("Computing the whole view's embedding, which propagation needs; "
                       "press J again when done.")  # fmt: skip
        return False

    def _start(self, plan, wait: bool):
        sam = self.sam
        if self.job is not None:
            sam.set_status("Propagation is running; wait or cancel it.")
            return None
        try:
            if not sam.prepare_prompts(wait) or not self._whole_view_ready(wait):
                return None
            used = sam.session.used_prompts
            engine = plan(sam.session)
        except (UserError, ValueError) as error:
            sam.user_error(error)
            return None
        sam.prompts_consumed(used)
        result: list = []
        drawn: list = []
        shape = spatial_shape(sam.image_layer)

        def work(job):
            from ..volume import PropagationCancelled
            from ._base import JobCancelled

            try:
                objects = engine.run(lambda: job.cancelled, lambda done, _: job.report(done))
            except (PropagationCancelled, JobCancelled):  # what was done stays, and shows
                objects = None
            drawn.append(render_objects(engine, shape))  # here, not in the GUI thread
            job.check()
            return objects

        def finished() -> None:
            self.job = None
            if sam.closed:  # the viewer went away meanwhile: nothing to show
                return
            self.run_button.setEnabled(True)
            if drawn:
                self.draw(drawn[0])
            if not result:
                sam.set_status("Propagation cancelled; what was done is shown. Press J to go on.")

        agreement = sam.session.seed_agreement  # set by the plan: a tile's mask redone

        def returned(objects) -> None:
            result.append(objects)
            note = ""
            if agreement is not None and agreement < SEED_AGREEMENT_NOTED:
                note = (f" It started from the click decoded again on the whole view (IoU "
                        f"{agreement:.2f} with the mask shown in its tile).")  # fmt: skip
            sam.set_status(_summary(objects, self.axis_combo.currentText()) + note)

        self.job = sam.start_job(work, "SAM: propagating", len(engine.stack),
                                 returned=returned, errored=sam.user_error,
                                 finished=finished)  # fmt: skip
        self.run_button.setEnabled(False)
        sam.set_status("Propagating...")
        if wait:
            sam.wait_for(lambda: self.job is None)
            return result[0] if result else None
        return None

    # -- showing, committing, clearing ---------------------------------------------------------
    def draw(self, labels: np.ndarray) -> None:
        """Show `render_objects`' labels in the "SAM propagation" layer."""
        from napari.layers import Labels

        image = self.sam.image_layer
        if image is None or self.sam.closed:
            return
        layer = self.layer
        shown = layer is not None and layer in self.sam.viewer.layers
        if not shown or layer.data.shape != labels.shape:
            self._remove_layer()
            layer = Labels(labels, name=PROPAGATION_LAYER, opacity=0.5, **transform_kwargs(image))
            self.layer = add_quietly(self.sam.viewer, layer)
        else:  # reused: adding a layer costs napari ~0.1 s of the GUI thread
            layer.data = labels
            layer.visible = True

    def _remove_layer(self) -> None:
        if self.layer is not None and self.layer in self.sam.viewer.layers:
            self.sam.viewer.layers.remove(self.layer)
        self.layer = None

    def clear(self) -> None:
        """Forget the propagation (nothing is written) and empty and hide its layer,
        which the next propagation reuses."""
        self.sam.session.clear_propagation()
        if self.layer is not None and self.layer in self.sam.viewer.layers:
            self.layer.data = np.zeros_like(self.layer.data)
            self.layer.visible = False

    def commit(self, output, overwrite: bool, world_point) -> list[int]:
        """Write every propagated object into the Labels layer `output` with one new id
        each, as one undoable step; record the lineage in its features. Returns the ids."""
        session, image = self.sam.session, self.sam.image_layer
        try:
            plan = session.plan_propagation_commit(
                output.data, overwrite, image_to_world=data_to_world(image),
                labels_to_world=data_to_world(output), world_point=world_point)  # fmt: skip
        except ValueError as error:
            frames = f"image {describe_frame(image)}; output {describe_frame(output)}"
            raise UserError(f"{error} ({frames})") from None
        with output.block_history():
            for indices, label_id in plan.writes:
                output.data_setitem(indices, label_id)
        session.remember_lineage(plan)
        self._record_lineage(output, session.last_lineage)
        self.clear()
        if plan.ids:
            output.selected_label = plan.ids[-1]
        return plan.ids

    def _record_lineage(self, output, table) -> None:
        from ..volume import merge_lineage

        self.lineage = merge_lineage(self.lineage, table)
        features = output.features
        ours = {"index", "parent", "first_frame", "last_frame"}
        if len(features.columns) and not set(features.columns) <= ours:
            notify("The output layer has features of its own: the lineage is kept for "
                   "'Lineage CSV...' only.", "info")  # fmt: skip
            return
        import pandas as pd

        columns = dict(self.lineage)
        columns["index"] = columns.pop("label")
        output.features = pd.DataFrame(columns)

    def export_lineage(self, path) -> None:
        """Write the lineage of the tracks committed so far as CSV (replaces `path`)."""
        from ..volume import write_lineage_csv

        if self.lineage is None:
            raise UserError("No tracks committed yet: propagate along t and commit first.")
        write_lineage_csv(path, self.lineage, overwrite=True)

    def _ask_export(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Save lineage", "lineage.csv", "CSV (*.csv)")
        if path:  # the dialog asked before replacing a file
            try:
                self.export_lineage(path)
                self.sam.set_status(f"Lineage saved to {path}.")
            except (UserError, OSError) as error:
                self.sam.user_error(error)


def render_objects(engine, shape: tuple[int, ...]) -> np.ndarray:
    """The engine's objects as int32 labels of the image's spatial `shape`, object k
    drawn with value k + 1 on its slices."""
    data = np.zeros(shape, np.int32)
    stack = engine.stack
    for number, obj in enumerate(engine.objects):
        for index, plane in obj.planes.items():
            view = stack.view(index)
            data[mask_indices(plane, view.displayed, view.slice_index, len(shape))] = number + 1
    return data


def _summary(objects, axis: str) -> str:
    present = [o for o in objects if o.slices]
    if not present:
        return "Propagation found no object."
    first = present[0]
    what = "1 object" if len(present) == 1 else f"{len(present)} objects"
    where = (f"{first.slices[0]}-{first.slices[-1]} (before {first.slices[0]}: "
             f"{first.ends[0] or 'not run'}; after {first.slices[-1]}: "
             f"{first.ends[1] or 'not run'})")  # fmt: skip
    if len(present) > 1:
        where = ", ".join(f"{o.slices[0]}-{o.slices[-1]}" for o in present)
    return (f"Propagated {what} along {axis}: {where}. Commit [K], or click on a slice "
            "to correct it and press J.")
