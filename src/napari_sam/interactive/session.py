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
selected candidate's low-res logits go back to the decoder as its mask prompt.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..embeddings import EmbeddingCache, fingerprint
from ..view import ViewSpec, extract_view
from .candidates import Candidate, PromptSet, best_index, prompts_grew, rank_candidates
from .commit import CommitError, CommitPlan, plan_commit, unwritable_reason, view_to_labels

__all__ = ["AnnotationSession", "EmbeddingResult"]

_MODEL_IDS = itertools.count(1)  # ids in embedding keys: unique across sessions sharing a cache


class EmbeddingResult(NamedTuple):
    """What an embedding job returns: the cache key, the embedding (None when cancelled),
    and the lazy view it read (remembered only if its pixels were not reported changed)."""

    key: tuple | None
    embedding: Any
    lazy_view: tuple | None


class AnnotationSession:
    """Interactive SAM on one 2D view at a time. See the module docstring for a script.

    Parameters: `model`, a `Sam` (or None, then `set_model` later); `cache`, an
    `EmbeddingCache` to share between sessions (default: a new 2 GiB one). The embedding
    of the current view is kept whatever the cache's budget.
    """

    def __init__(self, model=None, cache: EmbeddingCache | None = None) -> None:
        self.cache = EmbeddingCache() if cache is None else cache
        self._per_box = False
        self._model = None
        self._model_id = 0
        self._predictor = None
        self._data = None
        self._view: ViewSpec | None = None
        self._read_options: dict[str, Any] = {"rgb": False, "channel_axis": None, "channels": None}
        self._fingerprints: dict[tuple, tuple] = {}  # lazy views read: id -> (hash, where)
        self._pixels_generation = 0
        self._current: tuple[tuple, Any] | None = None  # (key, embedding) of the view
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
        self._model_id = next(_MODEL_IDS)
        self._predictor = SamPredictor(self._model)
        self._current = None
        self._reset_prediction()

    def _require_model(self):
        if self._model is None:
            raise ValueError("No model: AnnotationSession(load_model('tiny_cells')) or set_model.")
        return self._model

    # -- image and view ----------------------------------------------------------------
    def set_image(
        self,
        image,
        view: ViewSpec | Mapping[int, int] | None = None,
        *,
        rgb: bool | None = None,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        """Annotate a 2D view of `image` (numpy, dask or zarr; only the view is read).

        - 2D data: (H, W) gray or (H, W, 3|4) RGB(A) (`rgb=None` guesses RGB for a last
          axis of 3 or 4 on 3D data without `view`).
        - nD data: `view` is a `ViewSpec` or {axis: index} for every axis but the two
          displayed ones (the last two). `channel_axis` + `channels` (1 or 3 of them) make
          a gray or RGB view from a channel axis.
        A new image or view drops the prompts and candidates (they are view coordinates).
        Raises ValueError for shapes, views or channels that do not fit.
        """
        data = image[0] if isinstance(image, list | tuple) else image  # a pyramid: level 0
        if not hasattr(data, "shape") or not hasattr(data, "ndim"):
            data = np.asarray(data)
        if rgb is None:
            rgb = view is None and data.ndim == 3 and data.shape[-1] in (3, 4)
        spatial = data.ndim - (1 if rgb else 0)
        if not isinstance(view, ViewSpec):
            index = dict(view or {})
            displayed = [axis for axis in range(spatial) if axis not in index]
            if channel_axis is not None and channels and channel_axis not in index:
                displayed.remove(channel_axis)
                index[channel_axis] = 0
            view = ViewSpec(displayed[-2:], {**index, **dict.fromkeys(displayed[:-2], 0)})
        options = {"rgb": bool(rgb), "channel_axis": channel_axis,
                   "channels": None if channels is None else tuple(int(c) for c in channels)}  # fmt: skip
        if channel_axis is None or not channels:
            options["channel_axis"], options["channels"] = None, None
        changed = data is not self._data or view != self._view or options != self._read_options
        self._data, self._view, self._read_options = data, view, options
        if changed:
            if not self.is_lazy:  # fails here, not in a worker, for a view that does not fit
                self.read_view()
            self.clear()

    @property
    def view(self) -> ViewSpec | None:
        """The view annotated: its displayed (row, col) axes and the index of the others."""
        return self._view

    def read_view(self) -> tuple[np.ndarray, tuple]:
        """(pixels, where): the view's (H, W) or (H, W, C) pixels, read now, and the part
        of the embedding key that says where they come from. Safe in a worker thread."""
        return self.view_reader()()

    def view_reader(self) -> Callable[[], tuple[np.ndarray, tuple]]:
        """A function reading the current view later, with today's options (for workers)."""
        if self._data is None:
            raise ValueError("No image: call set_image(image) first.")
        data, view, options = self._data, self._view, dict(self._read_options)

        def read() -> tuple[np.ndarray, tuple]:
            pixels = extract_view(data, view.displayed, view.slice_index, **options)
            channel_axis = options["channel_axis"]
            sliced = {a: i for a, i in view.slice_index.items() if a != channel_axis}
            where = ((view.displayed, tuple(sliced.items())),
                     (channel_axis, tuple(options["channels"] or ())))  # fmt: skip
            return pixels, where

        return read

    @property
    def is_lazy(self) -> bool:
        """True for data that is not an in-memory numpy array (read only in workers)."""
        return self._data is not None and not isinstance(self._data, np.ndarray)

    def forget_pixels(self) -> None:
        """The pixels of lazy data may have changed (napari reported a change): read and
        hash them again before the next prediction. In-memory data is hashed every time."""
        self._fingerprints.clear()
        self._pixels_generation += 1

    def _lazy_id(self) -> tuple:
        options = (self._read_options["channel_axis"], self._read_options["channels"])
        return (id(self._data), self._view.key(), self._read_options["rgb"], options)

    def embedding_key(self) -> tuple | None:
        """The cache key of the current view's pixels, or None for lazy data not read yet.
        In-memory pixels are hashed on every call (~1 ms per megapixel), so pixels edited
        in place are never decoded on an old embedding."""
        if self._data is None:
            return None
        if not self.is_lazy:
            pixels, where = self.read_view()
            return (fingerprint(pixels), where, self._model_id)
        found = self._fingerprints.get(self._lazy_id())
        return None if found is None else (*found, self._model_id)

    # -- embedding ---------------------------------------------------------------------
    def embedding_for(self, key):
        """The embedding stored under `key`: the current view's, or one in the cache."""
        current = self._current
        if key is not None and current is not None and current[0] == key:
            return current[1]
        return None if key is None else self.cache.get(key)

    @property
    def has_embedding(self) -> bool:
        """Whether the current view's pixels have an embedding (nothing to compute)."""
        return self.embedding_for(self.embedding_key()) is not None

    def embedding_job(self) -> Callable[..., EmbeddingResult]:
        """A function `job(on_block=None) -> EmbeddingResult` that reads the view (lazy
        data), hashes it and embeds it unless the cache has it. It touches no session
        state, so a worker thread may run it; give its result to `store_embedding`.
        `on_block(done, total)` is called between encoder blocks; an exception raised
        there stops the encoder and propagates."""
        from ..predictor import embed_image

        model, model_id = self._require_model(), self._model_id
        read, key = self.view_reader(), self.embedding_key()
        lazy_view = (self._lazy_id(), self._pixels_generation) if self.is_lazy else None
        embedding_for = self.embedding_for

        def job(on_block: Callable[[int, int], None] | None = None) -> EmbeddingResult:
            pixels, where = read()
            found = (fingerprint(pixels), where, model_id) if key is None else key
            embedding = embedding_for(found)
            if embedding is None:
                embedding = embed_image(model, pixels, on_block)
            return EmbeddingResult(found, embedding, lazy_view)

        return job

    def store_embedding(self, result: EmbeddingResult) -> bool:
        """Keep a job's embedding as the current view's and in the cache. Returns False
        (and keeps nothing) when the model changed since the job started."""
        key, embedding, lazy_view = result
        if embedding is None or key[-1] != self._model_id:
            return False
        if lazy_view is not None and lazy_view[1] == self._pixels_generation:
            self._fingerprints[lazy_view[0]] = key[:-1]
        self._current = (key, embedding)
        self.cache.put(key, embedding)
        return True

    def compute_embedding(self) -> None:
        """Embed the current view now (in this thread), unless it is embedded already."""
        if not self.has_embedding:
            self.store_embedding(self.embedding_job()())

    # -- prompts -----------------------------------------------------------------------
    def add_point(self, point: Sequence[float], positive: bool = True) -> None:
        """Add a point prompt at (row, col) in view pixels; negative points say 'not this'."""
        point = np.asarray(point, dtype=float).reshape(1, 2)
        self.set_prompts(np.concatenate([self._points, point]),
                         np.append(self._labels, int(bool(positive))), self._boxes)  # fmt: skip

    def add_box(self, box: Sequence[float]) -> None:
        """Add a box prompt (min_row, min_col, max_row, max_col) in view pixels. Without
        `one_object_per_box` the last box is the one used."""
        box = np.asarray(box, dtype=float).reshape(1, 4)
        self.set_prompts(self._points, self._labels, np.concatenate([self._boxes, box]))

    def set_prompts(self, points=None, labels=None, boxes=None) -> None:
        """Replace all prompts: points (N, 2) (row, col), labels (N,) 1 positive / 0
        negative (default all positive), boxes (M, 4). Candidates follow on next access."""
        points = np.asarray(points if points is not None else np.zeros((0, 2)), float)
        points = points.reshape(-1, 2)
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels)
        boxes = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), float)
        boxes = boxes.reshape(-1, 4)
        if labels.shape != (len(points),):
            raise ValueError(f"Got {labels.size} labels for {len(points)} points.")
        for name, values in (("points", points), ("boxes", boxes)):
            if not np.isfinite(values).all():
                raise ValueError(f"The {name} contain NaN or infinite coordinates.")
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
        embedding = self.embedding_for(key)
        if embedding is None:
            result = self.embedding_job()()
            self.store_embedding(result)
            embedding = result.embedding
        predictor = self._predictor
        predictor.image_embedding = embedding
        start = time.perf_counter()
        if self.one_object_per_box and n_boxes:
            masks, scores = predictor.predict_boxes(self._boxes)
            self._reset_prediction()
            self._objects = [Candidate(f"box {i + 1}", mask, float(score), np.zeros(0))
                             for i, (mask, score) in enumerate(zip(masks, scores, strict=True))]  # fmt: skip
            self._used = (np.zeros(0, np.intp), np.arange(n_boxes))
        else:
            box = self._boxes[-1] if n_boxes else None
            prompts = PromptSet.from_arrays(self._points, self._labels, box)
            grew = self._last_logits is not None and prompts_grew(self._last_prompts, prompts)
            masks, scores, logits = predictor.predict(
                points=self._points if n_points else None,
                labels=self._labels if n_points else None,
                box=box,
                mask_input=self._last_logits if grew else None,
            )
            self._objects = []
            self._candidates = rank_candidates(masks, scores, logits)
            self._selected = best_index(self._candidates)
            self._last_prompts = prompts
            self._last_logits = self._candidates[self._selected].logits
            self._used = (np.arange(n_points), np.arange(n_boxes)[-1:])
        self.last_decode_seconds = time.perf_counter() - start
        return self.candidates

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

    def select(self, which: str | int) -> Candidate:
        """Choose a candidate by name ("whole", "part", "subpart") or index. It becomes
        the mask that refines the next prediction and the one committed."""
        names = [c.name for c in self.candidates]
        if not self._candidates:
            raise ValueError("There are no candidates: add a prompt first.")
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
        if self._candidates:
            return [self._candidates[self._selected].mask]
        return [c.mask for c in self.candidates]

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
        view = self._view
        spatial = len(view.displayed) + len(view.slice_index)
        labels_ndim = np.ndim(labels)
        image_to_world = np.eye(spatial + 1) if image_to_world is None else image_to_world
        if labels_to_world is None:
            labels_to_world = np.eye(labels_ndim + 1)
            if labels_ndim != spatial and labels_ndim != 2:
                raise ValueError(f"labels of shape {np.shape(labels)} do not match the "
                                 f"image's {spatial} spatial axes; give the frames.")  # fmt: skip
            if labels_ndim == 2 and spatial != 2:  # a 2D labels array for this view only
                view = ViewSpec((0, 1), {})
                image_to_world = np.eye(3)
        mapping = view_to_labels(view, image_to_world, labels_to_world, labels_ndim, world_point)
        return plan_commit(masks, labels, mapping, overwrite)

    def commit(self, labels: np.ndarray, overwrite: bool = False, **frames) -> list[int]:
        """Write the selected mask (or every box's) into `labels` (an in-memory integer
        numpy array, written in place) with new ids, then drop the prompts used.
        Returns the ids written ([] when every pixel was outside or taken). Frames as in
        `plan_commit`. Raises `CommitError` before writing anything for arrays that
        cannot be written in place (dask, zarr, read-only, float) or ids beyond the dtype."""
        reason = unwritable_reason(labels)
        if reason is not None:
            raise CommitError(f"The labels array {reason}; pass an in-memory numpy array.")
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
