"""The 2D view an annotation session works on, and its embedding: which pixels (any
array, a view and channel options), read when needed (lazy data only in a worker), keyed
by their content, embedded once per model and kept through an `EmbeddingCache`.

`EmbeddedView` is the base of `AnnotationSession`; `make_view_reader` and the embedding
keys it builds are shared with automatic segmentation over slices, so that clicks and
"segment everything" reuse each other's embeddings.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from ..embeddings import EmbeddingCache, fingerprint
from ..view import ViewSpec, extract_view

__all__ = ["EmbeddedView", "EmbeddingResult", "frame_key", "make_view_reader", "model_id_of"]

_VIEW_TILES_KEPT = 32  # tile embeddings of the view kept whatever the cache's budget

# A model's id in embedding keys: the same for the same model object, so sessions sharing
# a cache share its embeddings, and never reused for another model.
_MODEL_IDS = itertools.count(1)
_model_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_id_of(model) -> tuple[int, int]:
    """The id of `model` in embedding keys: (the model object's number, the version of
    its image encoder's weights), so that weights changed in place (fine-tuning the model
    in use) never serve embeddings of the old weights."""
    if model not in _model_ids:
        _model_ids[model] = next(_MODEL_IDS)
    # Every in-place change of a tensor bumps its version (torch's autograd counter).
    weights = sum(w._version for w in model.image_encoder.parameters())
    return _model_ids[model], weights


class EmbeddingResult(NamedTuple):
    """What an embedding job returns: the cache key of the view, its embedding (None
    when only tiles were needed), the lazy view it read (remembered only if its pixels
    were not reported changed meanwhile), and the embeddings of tiles of the view,
    {(min_row, min_col, max_row, max_col): embedding}."""

    key: tuple | None
    embedding: Any
    lazy_view: tuple | None
    tiles: Mapping[tuple, Any] = MappingProxyType({})  # read-only: shared default


def frame_key(key: tuple | None, frame: tuple | None) -> tuple | None:
    """The cache key of a tile `frame` of the view whose key is `key` (the view's own key
    for frame None): it keeps the view's fingerprint and ends with the same model id."""
    if key is None or frame is None:
        return key
    return (key[0], (key[1], ("tile", *(int(v) for v in frame))), key[-1])


def make_view_reader(data, rgb: bool = False, channel_axis: int | None = None,
                     channels: Sequence[int] | None = None):  # fmt: skip
    """A function `read(view) -> (pixels, where)`: the (H, W) or (H, W, C) pixels of a
    `ViewSpec` of `data` (see `napari_sam.view.extract_view` for the options), and the
    part of an embedding key saying where they come from. It reads `data` only when
    called, so a worker thread may call it."""
    channels = None if channels is None else tuple(int(c) for c in channels)
    extra = (channel_axis, tuple(channels or ()))

    def read(view: ViewSpec) -> tuple[np.ndarray, tuple]:
        pixels = extract_view(data, view.displayed, view.slice_index, rgb=rgb,
                              channel_axis=channel_axis, channels=channels)  # fmt: skip
        # The view does not depend on the channel slider when channels are picked.
        sliced = {a: i for a, i in view.slice_index.items() if a != channel_axis}
        return pixels, ((view.displayed, tuple(sliced.items())), extra)

    return read


class EmbeddedView:
    """A 2D view of an image and its embedding (see module docstring). Subclasses set
    `cache` and `_model`, and override `clear()` (what depends on the view)."""

    cache: EmbeddingCache
    _model = None

    def _init_view(self) -> None:
        self._data = None
        self._view: ViewSpec | None = None
        self._read_options: dict[str, Any] = {"rgb": False, "channel_axis": None, "channels": None}
        self._fingerprints: dict[tuple, tuple] = {}  # lazy views read: id -> (hash, where)
        self._pixels_generation = 0
        self._current: tuple[tuple, Any] | None = None  # (key, embedding) of the view
        self._view_tiles: OrderedDict[tuple, Any] = OrderedDict()  # tile key -> embedding

    def clear(self) -> None:
        """Drop what depends on the view (prompts, candidates)."""

    def embedding_frames(self) -> list[tuple | None]:
        """Where the next decoding needs an embedding: None for the whole view, or
        (min_row, min_col, max_row, max_col) tiles of it (`AnnotationSession` decodes
        prompts in tiles)."""
        return [None]

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
        if 0 in data.shape:
            raise ValueError(f"The image is empty: shape {tuple(data.shape)}.")
        picked = channel_axis is not None and bool(channels)
        if picked:
            if not -data.ndim <= channel_axis < data.ndim:
                raise ValueError(f"channel_axis {channel_axis} is not an axis of {data.shape}.")
            channel_axis %= data.ndim
        if rgb is None:  # a last axis of 3 or 4 holds colours, unless it holds the channels
            rgb = data.ndim >= 3 and data.shape[-1] in (3, 4) and channel_axis != data.ndim - 1
        spatial = data.ndim - (1 if rgb else 0)
        if not isinstance(view, ViewSpec):
            index = {int(a) % max(spatial, 1): i for a, i in dict(view or {}).items()}
            if picked:
                index.setdefault(channel_axis, 0)
            displayed = [axis for axis in range(spatial) if axis not in index]
            if len(displayed) != 2:
                raise ValueError(_view_advice(data.shape, spatial, rgb, index))
            view = ViewSpec(displayed, index)
        options = {"rgb": bool(rgb), "channel_axis": None, "channels": None}
        if channel_axis is not None and channels:
            options.update(channel_axis=channel_axis, channels=tuple(int(c) for c in channels))
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
        read, view = make_view_reader(self._data, **self._read_options), self._view
        return lambda: read(view)

    def view_shape(self) -> tuple[int, int]:
        """(rows, cols) of the view, without reading lazy data."""
        if self._data is None:
            raise ValueError("No image: call set_image(image) first.")
        rows, cols = self._view.displayed
        return int(self._data.shape[rows]), int(self._data.shape[cols])

    @property
    def model_id(self) -> tuple[int, int] | None:
        """The model's id in embedding keys: the same for the same model object with the
        same encoder weights (see `model_id_of`); None without a model."""
        return None if self._model is None else model_id_of(self._model)

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
        In-memory pixels are hashed on every call (~0.2 ms per megapixel), so pixels
        edited in place are never decoded on an old embedding."""
        if self._data is None:
            return None
        if not self.is_lazy:
            pixels, where = self.read_view()
            return (fingerprint(pixels), where, self.model_id)
        found = self._fingerprints.get(self._lazy_id())
        return None if found is None else (*found, self.model_id)

    # -- embedding ---------------------------------------------------------------------
    def embedding_for(self, key):
        """The embedding stored under `key` (see `frame_key` for a tile's): the current
        view's, one of its tiles', or one in the cache."""
        current = self._current
        if key is not None and current is not None and current[0] == key:
            return current[1]
        if key in self._view_tiles:
            return self._view_tiles[key]
        return None if key is None else self.cache.get(key)

    @property
    def has_embedding(self) -> bool:
        """Whether the current view's pixels have the embeddings the next decoding needs
        (see `embedding_frames`): nothing to compute."""
        return self.has_embeddings_for(self.embedding_key())

    def has_embeddings_for(self, key: tuple | None) -> bool:
        """Whether the view whose key is `key` has every frame's embedding the next
        decoding needs (False for None: lazy pixels not read yet)."""
        return key is not None and all(
            self.embedding_for(frame_key(key, frame)) is not None
            for frame in self.embedding_frames()
        )

    def embedding_job(self, frames: Sequence | None = None) -> Callable[..., EmbeddingResult]:
        """A function `job(on_block=None) -> EmbeddingResult` that reads the view (lazy
        data), hashes it and embeds it, or the tiles of it the next decoding needs
        (`frames`, default `embedding_frames()`), unless the cache has them. It touches
        no session state, so a worker thread may run it; give its result to
        `store_embedding`.
        `on_block(done, total)` is called between encoder blocks (counted over all the
        frames); an exception raised there stops the encoder and propagates."""
        from ..image import to_uint8_rgb
        from ..predictor import embed_image

        model, model_id = self._require_model(), self.model_id
        read, key = self.view_reader(), self.embedding_key()
        lazy_view = (self._lazy_id(), self._pixels_generation) if self.is_lazy else None
        embedding_for = self.embedding_for
        frames = self.embedding_frames() if frames is None else list(frames)

        def job(on_block: Callable[[int, int], None] | None = None) -> EmbeddingResult:
            pixels, where = read()
            found = (fingerprint(pixels), where, model_id) if key is None else key
            whole, tiles, rgb = None, {}, None
            for number, frame in enumerate(frames):
                embedding = embedding_for(frame_key(found, frame))
                if embedding is None:
                    report = None if on_block is None else functools.partial(
                        _report_frame, on_block, number, len(frames))  # fmt: skip
                    if frame is None:
                        embedding = embed_image(model, pixels, report)
                    else:  # scaled to uint8 over the whole view, so that the tiles agree
                        rgb = to_uint8_rgb(pixels) if rgb is None else rgb
                        crop = rgb[frame[0] : frame[2], frame[1] : frame[3]]
                        embedding = embed_image(model, crop, report)
                if frame is None:
                    whole = embedding
                else:
                    tiles[frame] = embedding
            return EmbeddingResult(found, whole, lazy_view, tiles)

        return job

    def store_embedding(self, result: EmbeddingResult) -> bool:
        """Keep a job's embedding as the current view's and in the cache. Returns False
        (and keeps nothing) when the model changed since the job started."""
        key, embedding, lazy_view, tiles = result
        if (embedding is None and not tiles) or key[-1] != self.model_id:
            return False
        if lazy_view is not None and lazy_view[1] == self._pixels_generation:
            self._fingerprints[lazy_view[0]] = key[:-1]
        if embedding is not None:
            self._current = (key, embedding)
            self.cache.put(key, embedding)
        for frame, tile_embedding in tiles.items():
            tile_key = frame_key(key, frame)
            self._view_tiles[tile_key] = tile_embedding
            self._view_tiles.move_to_end(tile_key)
            self.cache.put(tile_key, tile_embedding)
        while len(self._view_tiles) > _VIEW_TILES_KEPT:
            self._view_tiles.popitem(last=False)
        return True

    def compute_embedding(self) -> None:
        """Embed the current view now (in this thread), unless it is embedded already."""
        if not self.has_embedding:
            self.store_embedding(self.embedding_job()())


def _report_frame(on_block, number: int, frames: int, done: int, total: int) -> None:
    """Encoder progress of frame `number` of `frames`, as progress over all of them."""
    on_block(number * total + done, frames * total)


def _view_advice(shape, spatial: int, rgb: bool, index: dict) -> str:
    """What to pass when the image and the view do not leave exactly two axes on screen."""
    colour = " (its last axis is RGB)" if rgb else ""
    if spatial < 2:
        return f"An image of shape {tuple(shape)}{colour} has no two axes to show."
    if len(shape) == 3 and not rgb and shape[-1] <= 4 and not index:
        return (f"An image of shape {tuple(shape)} has {shape[-1]} channels: pick them with "
                f"channel_axis=2, channels=[0] (gray) or [0, 1, 2] (RGB), or a slice with "
                "view={0: index}.")  # fmt: skip
    missing = spatial - 2 - len(index)
    if missing > 0:
        return (f"An image of shape {tuple(shape)}{colour} has {spatial} axes: give the index "
                f"of {missing} more as view={{axis: index, ...}} (e.g. view={{0: 12}} for "
                "slice 12 of a stack); the last two remaining axes are shown.")  # fmt: skip
    return (
        f"view={index} leaves fewer than two axes of an image of shape {tuple(shape)}"
        f"{colour} on screen."
    )
