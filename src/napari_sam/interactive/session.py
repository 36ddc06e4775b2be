"""`AnnotationSession`: the click -> candidates -> commit loop of interactive SAM, without Qt.

One session holds a model, the 2D view of an image being annotated, the embedding of that
view (through an `EmbeddingCache`), the prompts, SAM's candidate masks for them and the
one selected, and commits it into a labels array with a fresh id. The napari widget is a
view over one session; a script or notebook drives the same object with numpy arrays:

>>> session = AnnotationSession(load_model("tiny_cells"))
>>> session.set_image(image)                 # (H, W) gray or (H, W, 3|4) RGB(A), any dtype
>>> session.add_point((row, col))            # positive; positive=False for a negative point
>>> [c.name for c in session.candidates]     # ['whole', 'part', 'subpart']
>>> session.select("part")
>>> new_ids = session.commit(labels)         # (H, W) integer array, written in place

Coordinates are (row, col) pixels of the view; boxes (min_row, min_col, max_row, max_col).
Refinement follows Meta's interactive use of SAM: when prompts are only added, the
selected candidate's low-res logits go back to the decoder as its mask prompt. A view
more than 1.25x the model's input is decoded in tiles at its own resolution (`tiled`,
see `napari_sam.interactive.tiling`).
"""

from __future__ import annotations

import functools
import numbers
import time
from collections.abc import Sequence

import numpy as np

from ..embeddings import EmbeddingCache
from ..tiled import paste_into
from ..view import ViewSpec
from .candidates import Candidate, PromptSet, best_index, rank_candidates
from .commit import CommitError, CommitPlan, plan_commit, unwritable_reason, view_to_labels
from .embedded_view import EmbeddedView, frame_key
from .propagating import PropagatingSession
from .tiling import TiledDecoding

__all__ = ["AnnotationSession"]


class AnnotationSession(TiledDecoding, PropagatingSession, EmbeddedView):
    """Interactive SAM on one 2D view at a time. See the module docstring for a script.

    Parameters: `model`, a `Sam` (or None, then `set_model` later); `cache`, an
    `EmbeddingCache` to share between sessions (default: a new 2 GiB one); `tiled`:
    decode prompts in tiles at the view's own resolution when it is larger than the
    model's input (see `napari_sam.interactive.tiling`). The embedding of the current
    view (and of its last 32 tiles) is kept whatever the cache's budget.
    """

    def __init__(
        self, model=None, cache: EmbeddingCache | None = None, tiled: bool = True
    ) -> None:
        self.cache = EmbeddingCache() if cache is None else cache
        self._tiled = bool(tiled)
        self._per_box = False
        self._model = None
        self._predictor = None
        self._init_view()
        self._points = np.zeros((0, 2))
        self._labels = np.zeros(0, np.int64)
        self._boxes = np.zeros((0, 4))
        self.last_decode_seconds = 0.0
        self._reset_prediction()
        if model is not None:
            self.set_model(model)

    @property
    def one_object_per_box(self) -> bool:
        """True: every box is an object of its own, all decoded in one batch; False: the
        last box (with the points) describes one object."""
        return self._per_box

    @one_object_per_box.setter
    def one_object_per_box(self, value: bool) -> None:
        if bool(value) != self._per_box:
            self._per_box = bool(value)
            self._reset_prediction()
            self._stale = self.has_prompts

    # -- model -------------------------------------------------------------------------
    @property
    def model(self):
        """The `Sam` in use (None before `set_model`)."""
        return self._model

    def set_model(self, model) -> None:
        """Use `model` (a `Sam`): later embeddings and predictions are its own."""
        from ..predictor import SamPredictor

        self._model = model.eval()
        self._predictor = SamPredictor(self._model)
        self._current = None
        self._view_tiles.clear()
        self._reset_prediction()
        self._stale = self.has_prompts  # the prompts stay, decoded by the new model

    # -- prompts -----------------------------------------------------------------------
    def add_point(self, point: Sequence[float], positive: bool = True) -> None:
        """Add a point prompt at (row, col) in view pixels; negative points say 'not this'."""
        point = np.asarray(point, dtype=float)
        if point.shape != (2,):
            raise ValueError(
                f"A point is (row, col) in the view's pixels; got {point.tolist()} (for a "
                "stack: set_image(stack, {0: z}) first, then the point on that slice)."
            )
        point = point.reshape(1, 2)
        self.set_prompts(np.concatenate([self._points, point]),
                         np.append(self._labels, int(bool(positive))), self._boxes)  # fmt: skip

    def add_box(self, box: Sequence[float]) -> None:
        """Add a box prompt (min_row, min_col, max_row, max_col) in view pixels. Without
        `one_object_per_box` the last box is the one used."""
        box = np.asarray(box, dtype=float)
        if box.shape != (4,):
            raise ValueError(f"A box is (min_row, min_col, max_row, max_col); got {box.tolist()}.")
        box = box.reshape(1, 4)
        self.set_prompts(self._points, self._labels, np.concatenate([self._boxes, box]))

    def set_prompts(self, points=None, labels=None, boxes=None) -> None:
        """Replace all prompts: points (N, 2) (row, col), labels (N,) 1 positive / 0
        negative (default all positive), boxes (M, 4). Candidates follow on next access."""
        points = np.asarray(points if points is not None else np.zeros((0, 2)), float)
        if points.size and points.shape[-1] != 2:
            raise ValueError(
                f"Points are (row, col) in the view's pixels; got shape {points.shape} "
                "(for a stack: set_image(stack, {0: z}) first)."
            )
        points = points.reshape(-1, 2)
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels)
        boxes = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), float)
        boxes = boxes.reshape(-1, 4)
        if labels.shape != (len(points),):
            raise ValueError(f"Got {labels.size} labels for {len(points)} points.")
        for name, values in (("points", points), ("boxes", boxes)):
            if not np.isfinite(values).all():
                raise ValueError(f"The {name} contain NaN or infinite coordinates.")
        if len(points) and self._view is not None:
            _check_points_inside(points, self.view_shape())
        same = (np.array_equal(points, self._points) and np.array_equal(boxes, self._boxes)
                and np.array_equal(labels, self._labels))  # fmt: skip
        self._points, self._labels, self._boxes = points, labels.astype(np.int64), boxes
        if not same:
            self._stale = True

    @property
    def points(self) -> np.ndarray:
        """(N, 2) float (row, col) point prompts."""
        return self._points.copy()

    @property
    def point_labels(self) -> np.ndarray:
        """(N,) int64: 1 positive, 0 negative."""
        return self._labels.copy()

    @property
    def boxes(self) -> np.ndarray:
        """(M, 4) float box prompts (min_row, min_col, max_row, max_col)."""
        return self._boxes.copy()

    @property
    def has_prompts(self) -> bool:
        return len(self._points) > 0 or len(self._boxes) > 0

    def clear(self) -> None:
        """Drop every prompt and the candidates (the embedding stays)."""
        self.set_prompts()
        self._reset_prediction()

    # -- candidates --------------------------------------------------------------------
    def _reset_prediction(self) -> None:
        self._candidates: list[Candidate] = []
        self._objects: list[Candidate] = []  # one per box in "one object per box" mode
        self._selected = -1
        self._last_prompts: PromptSet | None = None
        self._last_logits: np.ndarray | None = None
        self._last_tile: tuple[int, int, int, int] | None = None  # their frame
        self._used = (np.zeros(0, np.intp), np.zeros(0, np.intp))
        self._stale = False

    def predict(self) -> list[Candidate]:
        """Decode the prompts now (embedding the view first when needed) and return the
        candidates. Prompts only added since the last call refine the selected mask."""
        self._stale = False
        n_points, n_boxes = len(self._points), len(self._boxes)
        if not n_points and not n_boxes:
            self._reset_prediction()
            return []
        self._require_model()
        key = self.embedding_key()
        if not self.has_embeddings_for(key):
            result = self.embedding_job()()
            self.store_embedding(result)
            key = result.key
        start = time.perf_counter()
        if self.one_object_per_box and n_boxes:
            self._decode_boxes(key)
        else:
            self._decode_single_object(key)
        self.last_decode_seconds = time.perf_counter() - start
        return self.candidates

    def _decode_boxes(self, key: tuple) -> None:
        """One object per box, the boxes of each frame decoded in one batch."""
        predictor, shape = self._predictor, self.view_shape()
        frames = self.box_frames()
        masks, scores = [None] * len(frames), [0.0] * len(frames)
        for frame in dict.fromkeys(frames):
            chosen = [i for i, f in enumerate(frames) if f == frame]
            predictor.image_embedding = self.embedding_for(frame_key(key, frame))
            origin = np.zeros(4) if frame is None else np.tile(frame[:2], 2)
            frame_masks, frame_scores = predictor.predict_boxes(self._boxes[chosen] - origin)
            if frame is not None:
                frame_masks = paste_into(frame_masks, frame, shape)
            for i, mask, score in zip(chosen, frame_masks, frame_scores, strict=True):
                masks[i], scores[i] = mask, float(score)
        self._reset_prediction()
        triples = enumerate(zip(masks, scores, frames, strict=True))
        self._objects = [Candidate(f"box {i + 1}", mask, score, np.zeros(0), frame)
                         for i, (mask, score, frame) in triples]  # fmt: skip
        self._used = (np.zeros(0, np.intp), np.arange(len(frames)))

    def _decode_single_object(self, key: tuple) -> None:
        """The prompts as one object: three candidates for one point, else one."""
        predictor, n_points = self._predictor, len(self._points)
        frame, mask_input = self.single_object_plan()
        embedding = self.embedding_for(frame_key(key, frame))
        predictor.image_embedding = embedding
        origin = np.zeros(2) if frame is None else np.asarray(frame[:2], np.float64)
        box = self._boxes[-1] if len(self._boxes) else None
        _, scores, logits = predictor.predict(
            points=self._points - origin if n_points else None,
            labels=self._labels if n_points else None,
            box=None if box is None else box - np.tile(origin, 2),
            mask_input=mask_input,
            upscale=False,  # only the candidates looked at are upscaled
        )
        makers = [functools.partial(_upscale, predictor, low, embedding, frame,
                                    self.view_shape()) for low in logits]  # fmt: skip
        self._objects = []
        self._candidates = rank_candidates(makers, scores, logits,
                                           predictor.low_res_areas(logits), frame)  # fmt: skip
        self._selected = best_index(self._candidates)
        self._last_prompts = PromptSet.from_arrays(self._points, self._labels, box)
        self._last_logits = self._candidates[self._selected].logits
        self._last_tile = frame
        self._used = (np.arange(n_points), np.arange(len(self._boxes))[-1:])

    @property
    def decoded(self) -> bool:
        """False while prompts changed since the last decoding (then `candidates` decodes,
        embedding the view first if needed; a GUI checks `has_embedding` before)."""
        return not self._stale

    @property
    def candidates(self) -> list[Candidate]:
        """SAM's masks for the prompts, decoded on first access after a change: whole,
        part, subpart (largest first) for one point, one "mask" for more prompts, one
        "box i" per box with `one_object_per_box`. Each has mask (H, W) bool, predicted
        IoU and low-res logits."""
        if self._stale:
            self.predict()
        return list(self._candidates or self._objects)

    @property
    def selected(self) -> Candidate | None:
        """The chosen candidate (preselected: the highest predicted IoU); None in
        one-object-per-box mode, where every box's mask is committed."""
        candidates = self.candidates
        return candidates[self._selected] if self._candidates else None

    @property
    def selected_index(self) -> int:
        """Index of the selected candidate in `candidates` (-1 when none is selected)."""
        return self._selected if self.candidates and self._candidates else -1

    def select(self, which: str | int) -> Candidate:
        """Choose a candidate by name ("whole", "part", "subpart") or index. It becomes
        the mask that refines the next prediction and the one committed."""
        names = [c.name for c in self.candidates]
        if not self._candidates:
            raise ValueError("There are no candidates: add a prompt first.")
        if not isinstance(which, str | numbers.Integral) or isinstance(which, bool):
            raise ValueError(f"Choose a candidate by name {names} or index; got {which!r}.")
        if isinstance(which, str):
            if which not in names:
                raise ValueError(f"No candidate {which!r}; there are {names}.")
            which = names.index(which)
        if not 0 <= int(which) < len(names):
            raise ValueError(f"No candidate {which}; there are {len(names)}.")
        self._selected = int(which)
        self._last_logits = self._candidates[self._selected].logits
        return self._candidates[self._selected]

    def next_candidate(self) -> Candidate | None:
        """Select the next candidate in turn (None when there are none)."""
        if not self.candidates or not self._candidates:
            return None
        return self.select((self._selected + 1) % len(self._candidates))

    @property
    def used_prompts(self) -> tuple[np.ndarray, np.ndarray]:
        """(point indices, box indices) of the prompts behind the candidates: what a
        commit consumes (the last box only, unless one object per box)."""
        self.candidates  # noqa: B018 -- decodes pending prompts
        return self._used

    # -- commit ------------------------------------------------------------------------
    def commit_masks(self) -> list[np.ndarray]:
        """The (H, W) bool masks a commit writes: the selected candidate, or every box's."""
        candidates = self.candidates  # decodes pending prompts first
        if self._candidates:
            return [self._candidates[self._selected].mask]
        return [c.mask for c in candidates]

    def plan_commit(
        self,
        labels: np.ndarray,
        overwrite: bool = False,
        image_to_world=None,
        labels_to_world=None,
        world_point: Sequence[float] | None = None,
    ) -> CommitPlan:
        """Plan a commit into `labels` without writing: which pixels get which new id
        (ids above the array's maximum; without `overwrite` only 0 pixels are written).

        `labels` is indexed like the image's spatial axes unless frames are given:
        `image_to_world` / `labels_to_world` ((D+1, D+1) homogeneous data -> world
        matrices, as napari composes them) and `world_point` (the viewer's position, for
        labels with more axes than the image); the mask is then resampled by nearest
        neighbour so that it lands under the object in world space.
        Raises ValueError when nothing can be committed and `CommitError` when the commit
        cannot be done whole (ids beyond the dtype, a plane tilted against the labels).
        """
        masks = self.commit_masks()
        if not masks:
            raise ValueError("Nothing to commit: add a prompt first.")
        view, shape = self._view, tuple(np.shape(labels))
        spatial = len(view.displayed) + len(view.slice_index)
        if image_to_world is None and labels_to_world is None:  # same pixels, no frames
            image_shape = tuple(self._data.shape[:spatial])
            if shape == tuple(masks[0].shape) and spatial != 2:  # 2D labels of this view
                view, spatial = ViewSpec((0, 1), {}), 2
            elif shape != image_shape:
                raise ValueError(
                    f"Labels of shape {shape} match neither the image {image_shape} nor the "
                    f"view {tuple(masks[0].shape)}: pass labels of one of these shapes, or "
                    "the frames (image_to_world, labels_to_world) that map between them."
                )
        image_to_world = np.eye(spatial + 1) if image_to_world is None else image_to_world
        labels_to_world = np.eye(len(shape) + 1) if labels_to_world is None else labels_to_world
        mapping = view_to_labels(view, image_to_world, labels_to_world, len(shape), world_point)
        return plan_commit(masks, labels, mapping, overwrite)

    def commit(self, labels: np.ndarray, overwrite: bool = False, **frames) -> list[int]:
        """Write the selected mask (or every box's) into `labels` (an in-memory integer
        numpy array, written in place) with new ids, then drop the prompts used.
        Returns the ids written ([] when every pixel was outside or taken). Frames as in
        `plan_commit`. Raises `CommitError` before writing anything for arrays that
        cannot be written in place (dask, zarr, read-only, float) or ids beyond the dtype."""
        reason = unwritable_reason(labels)
        if reason is not None:
            raise CommitError(
                f"The labels array {reason}; pass a writable in-memory numpy array of "
                "integer ids (e.g. np.zeros(shape, np.int32))."
            )
        plan = self.plan_commit(labels, overwrite, **frames)
        for indices, label_id in plan.writes:
            labels[indices] = label_id
        self.drop_used_prompts()
        return plan.ids

    def drop_used_prompts(self) -> None:
        """Forget the prompts a commit consumed (see `used_prompts`) and the candidates."""
        points, boxes = self.used_prompts
        keep_points = np.setdiff1d(np.arange(len(self._points)), points)
        keep_boxes = np.setdiff1d(np.arange(len(self._boxes)), boxes)
        self._reset_prediction()
        self.set_prompts(self._points[keep_points], self._labels[keep_points],
                         self._boxes[keep_boxes])  # fmt: skip


def _check_points_inside(points: np.ndarray, shape: tuple[int, int]) -> None:
    """Points must lie on a pixel of the view (pixel i spans i - 0.5 to i + 0.5): SAM
    takes any coordinates, and one far outside gives a mask that means nothing."""
    outside = (points < -0.5).any(axis=1) | (points >= np.array(shape) - 0.5).any(axis=1)
    if outside.any():
        row, col = points[np.argmax(outside)]
        raise ValueError(
            f"The point ({row:.1f}, {col:.1f}) lies outside the view of {shape[0]} x "
            f"{shape[1]} pixels: points are (row, col) pixels of the view. Remove it (in "
            "napari it may have been placed on another image: press Q to clear the prompts)."
        )


def _upscale(predictor, low_res: np.ndarray, embedding, frame, shape) -> np.ndarray:
    """The (H, W) mask of the view from a frame's low-res logits (empty outside it)."""
    mask = predictor.upscale_masks(low_res, embedding)
    return mask if frame is None else paste_into(mask, frame, shape)
