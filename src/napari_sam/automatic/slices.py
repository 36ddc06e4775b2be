"""Segment everything over every 2D slice of nD data, into one label image.

`segment_slices` is the loop, for a worker thread or a script: it reads one 2D view at a
time (so lazy data is read plane by plane), embeds it unless a cache already has its
embedding, segments it with an `AutomaticMaskGenerator` and yields its labels with ids
made unique across the slices. `segment_everything_slices` runs that loop over a whole
numpy or dask array and returns the labels.

>>> labels = segment_everything_slices(load_model("tiny_cells"), stack)  # AIS: it has a head
>>> labels.shape == stack.shape, labels.dtype                  # (True, dtype('int32'))

Coordinates are the data's own axes; a view's `displayed` axes are its (row, col) axes.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ..embeddings import fingerprint
from ..view import ViewSpec, extract_view, mask_indices
from .everything import (
    EverythingSegmenter,
    NoObjectsWarning,
    check_params,
    choose_method,
    grid_params,
    is_blank,
)
from .generator import AutomaticMaskGenerator, GenerationCancelled
from .records import painted_labels
from .report import ScoreReport

__all__ = ["SliceLabels", "segment_everything_slices", "segment_slices", "slice_views"]

_MAX_ID = int(np.iinfo(np.int32).max)


class SliceLabels(NamedTuple):
    """One segmented slice: `index`, its position in the views given (0-based); `view`,
    the `ViewSpec` it shows; `labels`, (H, W) int32 with 0 for background and ids unique
    across all slices so far; `last_id`, the highest id given out so far (slices without
    objects keep the previous one)."""

    index: int
    view: ViewSpec
    labels: np.ndarray
    last_id: int


def segment_slices(
    generator: AutomaticMaskGenerator,
    read_view: Callable[[ViewSpec], tuple[np.ndarray, Hashable]],
    views: Iterable[ViewSpec],
    *,
    cache=None,
    model_id: Hashable | None = None,
    cancelled: Callable[[], bool] | None = None,
    first_id: int = 1,
) -> Iterator[SliceLabels]:
    """Segment everything in each view, one view at a time: yields a `SliceLabels` per view.

    generator: an `AutomaticMaskGenerator` (its model embeds the views and its filters
        apply) or an `EverythingSegmenter` (its method and parameters apply; the last
        slice stays decoded). Build it where bad parameters should raise (e.g. in the
        GUI thread).
    read_view(view) -> (pixels, where): the view's (H, W) gray or (H, W, 3|4) RGB(A)
        pixels (any dtype) and a hashable naming where they come from (the middle part
        of the cache key, as `AnnotationSession.read_view` gives for its view).
    views: the `ViewSpec`s to segment, in order (`slice_views` makes every slice's).
    cache: an `EmbeddingCache` (anything with `get(key)` and `put(key, embedding)`);
        a view whose key `(fingerprint(pixels), where, model_id)` it holds is not
        embedded again, and new embeddings are put there for the clicks to come.
        None: every view is embedded and nothing is kept.
    model_id: the model's id, the last part of the cache's keys (`napari_sam.embeddings`);
        needed with a cache, so that no other model's embedding is used.
    cancelled(): asked before each view and during each one; when it returns True the
        work stops and `GenerationCancelled` is raised (the slices yielded so far stand).
    first_id: the id of the first object (e.g. above the ids of labels being added to).

    Ids: the objects of the k-th slice get consecutive ids after the highest id of the
    slices before it (`painted_labels`' order within a slice).
    Raises ValueError at the call for a cache without model_id or a first_id < 1; while
    iterating, ValueError for more ids than int32 holds and the generator's errors for
    views it cannot segment.
    """
    if cache is not None and model_id is None:
        raise ValueError(
            "With a cache, pass model_id: the id the cache's keys give this model, so "
            "that no other model's embedding is used."
        )
    if isinstance(first_id, bool) or not isinstance(first_id, int | np.integer) or first_id < 1:
        raise ValueError(f"first_id must be an integer >= 1; got {first_id!r}.")
    return _slices(generator, read_view, views, cache, model_id, cancelled, int(first_id) - 1)


def _slices(generator, read_view, views, cache, model_id, cancelled, last_id):
    from ..predictor import embed_image

    model = generator.model
    for index, view in enumerate(views):
        if cancelled is not None and cancelled():
            raise GenerationCancelled("Segment everything was cancelled.")
        pixels, where = read_view(view)
        if is_blank(np.asarray(pixels)):  # nothing to find (see `is_blank`): no decoding
            yield SliceLabels(index, view, np.zeros(pixels.shape[:2], np.int32), last_id)
            continue
        key = None if cache is None else (fingerprint(pixels), where, model_id)
        embedding = None if key is None else cache.get(key)
        if embedding is None:
            embedding = embed_image(model, pixels)
            if key is not None:
                cache.put(key, embedding)
        if isinstance(generator, AutomaticMaskGenerator):
            records = generator.generate(pixels, embedding=embedding, cancelled=cancelled)
            plane = painted_labels(records, pixels.shape[:2])
        else:  # an EverythingSegmenter: "ais", or the grid decoded once per slice
            generator.decode(pixels, embedding=embedding, cancelled=cancelled)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoObjectsWarning)  # an empty slice is fine
                plane = generator.labels()
        count = int(plane.max(initial=0))
        if last_id + count > _MAX_ID:
            raise ValueError(
                f"Slice {index} would take ids up to {last_id + count}, more than int32 labels "
                "hold: segment fewer slices at a time or with stricter filters."
            )
        plane[plane > 0] += last_id
        last_id += count
        yield SliceLabels(index, view, plane, last_id)


def slice_views(shape: Sequence[int], displayed: Sequence[int] = (-2, -1)) -> list[ViewSpec]:
    """Every 2D view of data of spatial `shape` with `displayed` (row, col) axes (negative
    axes count from the end): one per combination of the other axes' indices, in C order
    (the last sliced axis varies fastest). Raises ValueError for axes that do not fit."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"Need data with at least 2 spatial axes; got shape {tuple(shape)}.")
    axes = [a for a in displayed if isinstance(a, int | np.integer) and -ndim <= a < ndim]
    if len(axes) != 2 or len(displayed) != 2 or axes[0] % ndim == axes[1] % ndim:
        raise ValueError(
            f"displayed must be two different axes of the {ndim} spatial axes, as "
            f"(row_axis, col_axis); got {displayed!r}."
        )
    rows, cols = (int(a) % ndim for a in axes)
    sliced = [axis for axis in range(ndim) if axis not in (rows, cols)]
    return [
        ViewSpec((rows, cols), dict(zip(sliced, combo, strict=True)))
        for combo in itertools.product(*(range(shape[axis]) for axis in sliced))
    ]


def segment_everything_slices(
    model,
    data,
    *,
    displayed: Sequence[int] = (-2, -1),
    rgb: bool | None = None,
    cancelled: Callable[[], bool] | None = None,
    link_axis: int | None = None,
    min_link_iou: float = 0.5,
    method: str | None = None,
    **params,
) -> np.ndarray:
    """Segment everything in every 2D slice of `data`; the labels of all slices together.

    model: a `Sam` (e.g. `load_model("tiny_cells")`).
    data: an array (numpy, dask, zarr: read one slice at a time) of shape (..., H, W),
        gray, or (..., H, W, 3|4) with `rgb`; a 2D image is one slice.
    displayed: the (row, col) axes of each slice (default the last two spatial axes).
    rgb: the last axis holds colour; None guesses it for data of 3 or more axes whose last
        axis is 3 or 4 ((Y, X, 3) or (Z, Y, X, 3); pass rgb=False for a gray stack of 3
        or 4 columns).
    cancelled: as in `segment_slices` (raises `GenerationCancelled`).
    link_axis: a spatial axis that is not displayed (e.g. 0, z, of (Z, Y, X) data):
        the objects of consecutive slices along it that overlap with IoU >= min_link_iou
        become one 3D object (`napari_sam.volume.linking.link_slices`: IoU and an
        optimal one-to-one assignment; every index of the other sliced axes, e.g. t,
        on its own). None: every object of every slice keeps its own id.
    min_link_iou: the least IoU, in (0, 1], for two objects to be linked.
    method: "ais", "amg" or None, as `segment_everything` (None: "ais" where the model
        has an instance head).
    params: the method's parameters, as `segment_everything` ("amg": those of
        `AutomaticMaskGenerator` on top of `grid_defaults(model)`).

    Warns `NoObjectsWarning` ("amg") when no slice has an object, with the scores seen
    over all slices and what to lower.
    Returns int32 labels of the data's spatial shape (the colour axis dropped), 0 for
    background, every object with its own id across all slices, consecutive from 1;
    with link_axis, one id per linked 3D object, consecutive from 1.
    Raises ValueError for bad axes or parameters (before any slice is segmented).
    """
    if not hasattr(data, "shape") or not hasattr(data, "ndim"):
        data = np.asarray(data)
    if rgb is None:
        rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
    shape = tuple(data.shape[:-1] if rgb else data.shape)
    if 0 in shape:
        raise ValueError(f"The data is empty (shape {tuple(data.shape)}): nothing to segment.")
    views = slice_views(shape, displayed)
    link = None
    if link_axis is not None:
        link = _link_axes(len(shape), views[0].displayed, link_axis, min_link_iou)
    method = choose_method(model, method)
    check_params(method, params)  # before any slice is read
    if method == "ais":
        generator = EverythingSegmenter(model, "ais", **params)
    else:
        plane = tuple(shape[axis] for axis in views[0].displayed)
        generator = AutomaticMaskGenerator(model, **grid_params(model, params, plane))
    labels = np.zeros(shape, np.int32)

    def read(view: ViewSpec) -> tuple[np.ndarray, Hashable]:
        return extract_view(data, view.displayed, view.slice_index, rgb=rgb), view.key()

    seen, last_report = ScoreReport(), None  # the grid's scores over all slices
    for _, view, plane, _ in segment_slices(generator, read, views, cancelled=cancelled):
        found = plane > 0
        labels[mask_indices(found, view.displayed, view.slice_index, len(shape))] = plane[found]
        report = getattr(generator, "last_report", None)  # a new one per decoded slice
        if report is not None and report is not last_report:
            seen.extend(report)
            last_report = report
    if not labels.any():
        _warn_nothing_found(generator, seen, len(views))
    if link is not None:
        from ..volume.linking import link_slices  # volume is only needed for linking

        axis, plane_axes = link
        labels = link_slices(labels, axis, min_link_iou, plane_axes=plane_axes)
    return labels


def _warn_nothing_found(generator, seen: ScoreReport, n_views: int) -> None:
    """One `NoObjectsWarning` for a stack where no slice has an object, saying why."""
    if not isinstance(generator, AutomaticMaskGenerator):
        return  # the instance head found no foreground: a result, as for one image
    where = f"any of the {n_views} slices" if n_views > 1 else "the image"
    if seen.predicted_iou:
        why = seen.why_empty(generator.pred_iou_thresh, generator.stability_score_thresh)
    else:
        why = "Every slice is blank (one value throughout)."
    warnings.warn(NoObjectsWarning(f"No object was found in {where}. {why}"), stacklevel=3)


def _link_axes(ndim: int, displayed: tuple[int, int], link_axis, min_iou):
    """(link axis, plane axes) for `link_slices`, checked before any slice is segmented."""
    from ..volume.linking import linking_axes

    if (
        isinstance(link_axis, bool)
        or not isinstance(link_axis, int | np.integer)
        or not (-ndim <= link_axis < ndim)
        or int(link_axis) % ndim in displayed
    ):
        raise ValueError(
            f"link_axis must be a spatial axis that is not displayed (not {displayed}) of "
            f"the {ndim}D data, e.g. 0 for (Z, Y, X); got {link_axis!r}."
        )
    try:
        return linking_axes(ndim, link_axis, min_iou, plane_axes=displayed)
    except ValueError as error:  # only min_iou is left to be wrong: say it by its name here
        raise ValueError(str(error).replace("min_iou", "min_link_iou")) from None
