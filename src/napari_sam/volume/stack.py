"""The slices of a stack along one axis, and their embeddings, computed once and shared.

A `SliceStack` names the 2D views of nD data that differ only in their index along one
axis (z of a z-stack, t of a time-lapse), reads one at a time (lazy data is read plane by
plane) and embeds it unless an `EmbeddingCache` or given embeddings already hold it. Its
cache keys are those of `AnnotationSession`, so clicks, propagation and segment
everything reuse each other's embeddings.

>>> stack = SliceStack.of_volume(model, volume, axis=0)      # (Z, Y, X) or (Z, Y, X, 3)
>>> stack.embedding(12)                                       # an ImageEmbedding of volume[12]
>>> embeddings = embed_slices(model, volume)                  # {z: ImageEmbedding}, for reuse
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..embeddings import fingerprint
from ..interactive.embedded_view import make_view_reader, model_id_of
from ..view import ViewSpec

__all__ = ["PropagationCancelled", "SliceEmbeddings", "SliceStack", "embed_slices"]


class PropagationCancelled(Exception):
    """Raised from `cancelled()` checks: the slices done so far stand."""


class SliceStack:
    """The views `view(i)` of `data` for i in range(len(stack)): `base` with the index of
    `axis` set to i. `embedding(i)` embeds one (see module docstring).

    model: the `Sam` that embeds; data: numpy, dask or zarr; base: a `ViewSpec` whose
    `slice_index` holds `axis`; read_options: `make_view_reader`'s (rgb, channel_axis,
    channels); cache: an `EmbeddingCache` or None; embeddings: {index: ImageEmbedding}
    (or a sequence) computed before, e.g. by `embed_slices`, used first.
    """

    def __init__(self, model, data, base: ViewSpec, axis: int, *, read_options=None,
                 cache=None, embeddings=None) -> None:  # fmt: skip
        if axis not in base.slice_index:
            raise ValueError(
                f"Axis {axis} is displayed or not an axis of the data: propagation runs "
                f"along a sliced axis ({sorted(base.slice_index)})."
            )
        self.model, self.data, self.base, self.axis = model, data, base, int(axis)
        self._read = make_view_reader(data, **(read_options or {}))
        self.cache = cache
        if embeddings is not None and not isinstance(embeddings, Mapping):
            embeddings = dict(enumerate(embeddings))
        self._given = dict(embeddings or {})
        self._sources = dict(getattr(embeddings, "sources", {}))  # index -> (hash, where)
        self._model_id = model_id_of(model)
        self._plane_shape: tuple[int, int] | None = None
        self._check_given()

    @classmethod
    def of_volume(cls, model, volume, axis: int = 0, rgb: bool | None = None, **kwargs):
        """The stack of a 3D volume ((Z, Y, X), or (Z, Y, X, 3|4) RGB) along `axis`.
        Raises ValueError for data that is not one volume, saying what to pass."""
        if not hasattr(volume, "shape") or not hasattr(volume, "ndim"):
            volume = np.asarray(volume)
        if rgb is None:
            rgb = volume.ndim == 4 and volume.shape[-1] in (3, 4)
        spatial = volume.ndim - (1 if rgb else 0)
        if rgb and volume.shape[-1] not in (3, 4):
            raise ValueError(f"rgb=True needs a last axis of 3 or 4 colours; got shape "
                             f"{tuple(volume.shape)} (leave rgb=None for a gray stack).")
        if spatial != 3:
            what = "a single 2D image" if spatial == 2 else f"{spatial} spatial axes"
            advice = ("segment it with SamPredictor or AnnotationSession instead"
                      if spatial == 2 else "pass one volume, e.g. movie[t] of a (T, Z, Y, X) "
                      "array, or use AnnotationSession.propagate on the nD data")  # fmt: skip
            raise ValueError(
                f"propagate needs a stack (Z, Y, X) or (Z, Y, X, 3); got shape "
                f"{tuple(volume.shape)}, {what}: {advice}."
            )
        if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -3 <= axis < 3:
            raise ValueError(f"axis must be one of the volume's 3 spatial axes; got {axis!r}.")
        axis = int(axis) % 3
        displayed = [a for a in range(3) if a != axis]
        return cls(model, volume, ViewSpec(displayed, {axis: 0}), axis,
                   read_options={"rgb": bool(rgb)}, **kwargs)  # fmt: skip

    def _check_given(self) -> None:
        from ..predictor import ImageEmbedding

        for index, embedding in self._given.items():
            if not isinstance(embedding, ImageEmbedding):
                raise ValueError(
                    f"embeddings must map slice index -> ImageEmbedding (as embed_slices "
                    f"returns); slice {index} holds a {type(embedding).__name__}."
                )
            if tuple(embedding.original_size) != self.plane_shape:
                raise ValueError(
                    f"The embedding given for slice {index} is of a {embedding.original_size}"
                    f" image, but the slices along axis {self.axis} are {self.plane_shape}: "
                    "pass embed_slices(model, volume, axis) of this volume and axis."
                )

    def __len__(self) -> int:
        return int(self.data.shape[self.axis])

    def view(self, index: int) -> ViewSpec:
        return ViewSpec(self.base.displayed, {**self.base.slice_index, self.axis: int(index)})

    def check_index(self, index) -> int:
        """`index` as an int in range, or ValueError saying the valid range."""
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise ValueError(f"The slice index must be an integer; got {index!r}.")
        if not 0 <= index < len(self):
            raise ValueError(
                f"Slice {index} is outside the stack: axis {self.axis} has {len(self)} slices "
                f"(0 to {len(self) - 1})."
            )
        return int(index)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(H, W) of every view."""
        if self._plane_shape is None:
            shape = self.data.shape
            self._plane_shape = (int(shape[self.base.displayed[0]]),
                                 int(shape[self.base.displayed[1]]))  # fmt: skip
        return self._plane_shape

    def read(self, index: int) -> tuple[np.ndarray, tuple]:
        """(pixels, where) of slice `index`, read now."""
        return self._read(self.view(index))

    def remember(self, index: int, embedding) -> None:
        """Use `embedding` for slice `index` (one computed already, e.g. the view's)."""
        self._given[int(index)] = embedding

    def embedding(self, index: int, on_block: Callable[[int, int], None] | None = None):
        """The `ImageEmbedding` of slice `index`: given, cached, or computed (and cached)."""
        from ..predictor import embed_image

        if index in self._given and index not in self._sources:
            return self._given[index]  # a plain mapping: trusted as given
        pixels, where = self.read(index)
        if index in self._given:  # from embed_slices: only if made of these pixels
            if self._sources[index] != (fingerprint(pixels), where):
                raise ValueError(
                    f"The embeddings given were computed from other pixels than slice "
                    f"{index} of this volume along axis {self.axis}: pass "
                    "embed_slices(model, volume, axis) of this very volume."
                )
            return self._given[index]
        key = (fingerprint(pixels), where, self._model_id)
        found = None if self.cache is None else self.cache.get(key)
        if found is None:
            found = embed_image(self.model, pixels, on_block)
            if self.cache is not None:
                self.cache.put(key, found)
        self.last_source = (index, key[:2])
        return found


def embed_slices(
    model,
    volume,
    axis: int = 0,
    indices: Iterable[int] | None = None,
    *,
    rgb: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[int, object]:
    """Embeddings of the slices of a volume ((Z, Y, X) or (Z, Y, X, 3)) along `axis`:
    {index: ImageEmbedding}, to pass to `propagate(..., embeddings=...)` and reuse over
    many objects. `indices`: which slices (default all). `progress(done, total)` after
    each slice; `cancelled()` before each (raises `PropagationCancelled`)."""
    stack = SliceStack.of_volume(model, volume, axis, rgb)
    every = range(len(stack)) if indices is None else indices
    wanted: Sequence[int] = [stack.check_index(i) for i in every]
    embeddings = SliceEmbeddings()
    for done, index in enumerate(wanted):
        if cancelled is not None and cancelled():
            raise PropagationCancelled("Embedding the slices was cancelled.")
        embeddings[index] = stack.embedding(index)
        embeddings.sources[index] = stack.last_source[1]
        if progress is not None:
            progress(done + 1, len(wanted))
    return embeddings


class SliceEmbeddings(dict):
    """{slice index: ImageEmbedding}, as `embed_slices` returns it, remembering which
    pixels each was made of (`sources`: index -> (fingerprint, where)), so that a stack
    given them uses them only for those pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[int, tuple] = {}

    def __repr__(self) -> str:
        return f"SliceEmbeddings({len(self)} slices: {sorted(self)})"
