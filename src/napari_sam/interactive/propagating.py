"""The session's objects through a stack: propagate what is selected on this slice along
an axis of nD data, correct it on any slice, divide it (time-lapses), commit it with one
id per object. A part of `AnnotationSession` (see `napari_sam.volume` for the engine).

>>> session.set_image(stack, {0: 12}); session.add_point((40, 52))
>>> objects = session.propagate()            # along the one sliced axis; VolumeObjects
>>> session.set_image(stack, {0: 20}); session.add_point((44, 50), positive=False)
>>> session.propagate()                      # a correction on slice 20, re-propagated
>>> session.commit_propagation(labels)       # one id per object, all slices
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .commit import CommitError, CommitPlan, plan_objects_commit, unwritable_reason, view_to_labels

__all__ = ["PropagatingSession"]


class PropagatingSession:
    """Mixin of `AnnotationSession`: needs its view, model, cache and candidates."""

    _propagation = None
    last_lineage = None  # the lineage table of the last propagation committed
    _propagation_source = None  # (data, read options, displayed, other axes) it belongs to

    @property
    def propagation(self):
        """The `napari_sam.volume.Propagation` being built (None when there is none)."""
        return self._propagation

    @property
    def propagation_on_this_image(self) -> bool:
        """Whether the propagation was made on the image (and channels) now set."""
        engine = self._propagation
        return engine is not None and self._view is not None and \
            self._propagation_source[:2] == self._source_of(engine.stack.axis)[:2]  # fmt: skip

    def propagation_axes(self) -> list[int]:
        """The axes of the data the current view can be propagated along: its sliced
        axes, without a channel axis that forms the view."""
        if self._view is None:
            return []
        channel = self._read_options.get("channel_axis") if self._read_options.get("channels") \
            else None  # fmt: skip
        return [a for a in self._view.slice_index if a != channel]

    def plan_propagation(self, axis: int | None = None, settings=None):
        """Put the current slice's result into the propagation without running it (a GUI
        runs `propagation.run()` in a worker): the selected candidate (or every box's
        object) starts new objects, or corrects the object it overlaps when the view is
        a slice of the current propagation; without prompts, a propagation with work
        queued (cancelled, or daughters of `divide`) goes on. Returns the `Propagation`.
        Raises ValueError without a mask to propagate or a sliced axis to go along."""
        from ..volume.propagation import Propagation
        from ..volume.stack import SliceStack

        axes = self.propagation_axes()
        if axis is None:
            if not axes:
                raise ValueError("The view has no sliced axis: propagation needs a stack "
                                 "(set_image(stack, {0: z})).")  # fmt: skip
            axis = axes[-1]  # the sliced axis nearest the displayed ones: z of (t, z, y, x)
        if axis not in axes:
            raise ValueError(f"Axis {axis} is not a sliced axis of the view; choose one of "
                             f"{axes}.")  # fmt: skip
        candidates = self.candidates
        if not candidates and self._propagation is not None and self._propagation.pending \
                and self._propagation_covers_view():  # fmt: skip
            return self._propagation  # a cancelled run, or daughters: go on
        if not candidates:
            raise ValueError("Nothing to propagate: add a prompt on this slice first.")
        chosen = self.whole_view_versions()  # a candidate of a tile: again on the whole view
        if not all(candidate.mask.any() for candidate in chosen):
            raise ValueError("The mask on this slice is empty (a negative point can remove "
                             "the whole object): move or delete that point, or clear the "
                             "prompts (Q) and click again.")  # fmt: skip
        index = self._view.slice_index[axis]
        source = self._source_of(axis)
        engine = self._propagation
        if engine is None or self._propagation_source != source or (
            settings is not None and settings != engine.settings):
            stack = SliceStack(self._require_model(), self._data, self._view, axis,
                               read_options=self._read_options, cache=self.cache)  # fmt: skip
            engine = Propagation(stack, settings)
            self._propagation, self._propagation_source = engine, source
        current = self._current  # the view's embedding, whatever the cache's budget; when
        # clicks were decoded in tiles it may be another view's, which must not be used
        if current is not None and current[0] == self.embedding_key():
            engine.stack.remember(index, current[1])
        corrected, new, before = set(), [], len(engine)
        for candidate in chosen:
            number = self._object_under(candidate.mask, index, before)
            # A box's object (one object per box) comes without low-res logits.
            logits = candidate.logits if np.size(candidate.logits) else None
            if number is None or number in corrected:
                new.append((candidate.mask, logits))
            else:
                engine.correct(number, index, mask=candidate.mask, logits=logits)
                corrected.add(number)
        if new:  # together, so that they share no pixel
            masks = np.stack([mask for mask, _ in new])
            all_logits = None if any(lo is None for _, lo in new) else \
                np.stack([lo for _, lo in new])  # fmt: skip
            engine.add_objects(index, masks=masks, logits=all_logits)
        self.drop_used_prompts()
        return engine

    def propagate(self, axis: int | None = None, settings=None, cancelled=None, progress=None):
        """`plan_propagation` and run it here: returns the objects (`VolumeObject`s)."""
        return self.plan_propagation(axis, settings).run(cancelled, progress)

    def divide(self, axis: int | None = None) -> list[int]:
        """Divide the propagated object under the positive points of this slice (a frame
        of a time-lapse) into one daughter per point: the parent ends on the previous
        frame, the daughters start here and are queued (`propagate()` runs them).
        Returns the daughters' object numbers; raises ValueError without a propagated
        object under the points or with fewer than 2 positive points."""
        engine = self._propagation
        positive = self._points[self._labels == 1]
        if not self._propagation_covers_view():
            raise ValueError("Propagate the object first, then divide it on a later frame.")
        if len(positive) < 2:
            raise ValueError("Place one positive point on each daughter (at least 2).")
        index = self._view.slice_index[engine.stack.axis]
        parent = self._object_under_point(positive[0], index - 1) \
            if index > 0 else None  # fmt: skip
        if parent is None:
            raise ValueError("No propagated object on the previous frame under the first "
                             "point: a division splits an object that was there.")  # fmt: skip
        daughters = engine.divide(parent, index, positive)
        self.clear()
        return daughters

    def clear_propagation(self) -> None:
        """Forget the propagation (nothing is written)."""
        self._propagation = self._propagation_source = None

    def plan_propagation_commit(self, labels, overwrite: bool = False, image_to_world=None,
                                labels_to_world=None, world_point=None) -> CommitPlan:  # fmt: skip
        """Plan writing every propagated object into `labels` with one new id each, all
        its slices in one step (see `plan_commit` for ids, overwrite and frames; without
        frames `labels` has the image's spatial shape)."""
        engine = self._propagation
        if engine is None or not any(o.planes for o in engine.objects):
            raise ValueError("Nothing propagated to commit: propagate an object first.")
        if not self.propagation_on_this_image:
            raise ValueError("The propagation was made on another image: go back to that "
                             "image to commit it, or clear it.")  # fmt: skip
        shape = tuple(np.shape(labels))
        spatial = len(self._view.displayed) + len(self._view.slice_index)
        # Arrays of fewer axes line up with the image's last ones (as napari's layers do):
        # labels without the propagation's axis would get every slice drawn on one plane.
        if engine.stack.axis < spatial - len(shape):
            raise ValueError(f"The labels have {len(shape)} axes and no axis for the "
                             f"image's axis {engine.stack.axis}, along which the objects "
                             "were propagated: commit into labels with the stack's axes "
                             "(in napari: choose such an output layer, or a new one).")
        if image_to_world is None and labels_to_world is None:
            image_shape = tuple(self._data.shape[:spatial])
            if shape != image_shape:
                raise ValueError(f"Labels of shape {shape} do not match the image "
                                 f"{image_shape}: pass labels of that shape or the frames.")
        image_to_world = np.eye(spatial + 1) if image_to_world is None else image_to_world
        labels_to_world = np.eye(len(shape) + 1) if labels_to_world is None else labels_to_world
        stack, objects = engine.stack, []
        for obj in engine.objects:
            objects.append([
                (plane, view_to_labels(stack.view(i), image_to_world, labels_to_world,
                                       len(shape), world_point))
                for i, plane in obj.planes.items()
            ])  # fmt: skip
        return plan_objects_commit(objects, labels, overwrite)

    def commit_propagation(self, labels, overwrite: bool = False, **frames) -> list[int]:
        """Write every propagated object into `labels` (an in-memory integer numpy array)
        with one new id each and forget the propagation. Returns the ids, in object
        order (an object with nothing to write gets none). Errors as `commit`."""
        reason = unwritable_reason(labels)
        if reason is not None:
            raise CommitError(f"The labels array {reason}; pass a writable in-memory numpy "
                              "array of integer ids.")  # fmt: skip
        plan = self.plan_propagation_commit(labels, overwrite, **frames)
        for indices, label_id in plan.writes:
            labels[indices] = label_id
        self.remember_lineage(plan)
        self.clear_propagation()
        return plan.ids

    def remember_lineage(self, plan: CommitPlan) -> None:
        """After a propagation commit: `last_lineage` becomes its objects' lineage table
        (label, parent, first_frame, last_frame; see `napari_sam.volume.lineage`)."""
        from ..volume.lineage import lineage_table

        ids = dict(zip(plan.sources, plan.ids, strict=True))
        self.last_lineage = lineage_table(self._propagation.objects, ids)

    # -- helpers -------------------------------------------------------------------------
    def _source_of(self, axis: int) -> tuple:
        others = tuple((a, i) for a, i in self._view.slice_index.items() if a != axis)
        options = tuple(sorted(self._read_options.items()))
        return (id(self._data), options, self._view.displayed, axis, others)

    def _propagation_covers_view(self) -> bool:
        engine = self._propagation
        return engine is not None and self._view is not None and \
            engine.stack.axis in self._view.slice_index and \
            self._propagation_source == self._source_of(engine.stack.axis)  # fmt: skip

    def _object_under(self, mask: np.ndarray, index: int, count: int) -> int | None:
        """Of the first `count` propagated objects, the one that `mask` mostly covers
        on slice `index` or that mostly covers `mask` (more than half of the smaller of
        the two): the object a new mask there corrects. None: a new object."""
        if not self._propagation_covers_view():
            return None
        best, most = None, 0.5
        for number, obj in enumerate(self._propagation.objects[:count]):
            plane = obj.planes.get(index)
            if plane is None:
                continue
            smaller = max(min(int(plane.sum()), int(mask.sum())), 1)
            overlap = np.logical_and(plane, mask).sum() / smaller
            if overlap > most:
                best, most = number, overlap
        return best

    def _object_under_point(self, point: Sequence[float], index: int) -> int | None:
        if not self._propagation_covers_view():
            return None
        row, col = (round(float(v)) for v in point)
        for number, obj in enumerate(self._propagation.objects):
            plane = obj.planes.get(index)
            if plane is not None and 0 <= row < plane.shape[0] and 0 <= col < plane.shape[1] \
                    and plane[row, col]:  # fmt: skip
                return number
        return None

    def propagated_logits(self, points) -> np.ndarray | None:
        """The low-res logits on this slice of the propagated object under the first of
        `points` ((N, 2) or one (row, col)) that lies on one: the mask prompt that lets
        a negative point cut that object's mask (None: no object under them)."""
        if not self._propagation_covers_view():
            return None
        index = self._view.slice_index[self._propagation.stack.axis]
        for point in np.asarray(points, dtype=float).reshape(-1, 2):
            number = self._object_under_point(point, index)
            if number is not None:
                return self._propagation.logits(number, index)
        return None
