"""Link the objects of consecutive 2D slices into 3D objects by their overlap.

Segment everything works one 2D slice at a time, so the same nucleus gets a new id in
every slice. `link_slices` gives an object of slice k+1 the id of the object of slice k it
overlaps best: the intersection over union (IoU) of every pair of objects of the two
slices, then an optimal one-to-one assignment (Hungarian method, scipy's
`linear_sum_assignment`) among the pairs with IoU >= `min_iou`. This is tracking by
overlap, as classic frame-to-frame trackers and micro-sam's automatic 3D segmentation
link their per-slice objects; the code here is this package's own.

>>> linked = link_slices(labels)             # (Z, Y, X) int labels, fresh ids per slice
>>> linked = link_slices(labels_tzyx, axis=1)  # along z, every time point on its own
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ["link_slices", "linking_axes"]

# Contingency tables up to this many cells (or the slice's pixel count) are a bincount;
# larger ones (tens of thousands of objects per slice) are counted with np.unique.
_DENSE_CELLS = 1 << 22


def linking_axes(
    ndim: int, axis: int = 0, min_iou: float = 0.5, plane_axes: Sequence[int] | None = None
) -> tuple[int, tuple[int, int]]:
    """Check `link_slices`' parameters for labels of `ndim` axes, before any work.

    Returns (axis, (row_axis, col_axis)) as non-negative axes; the plane axes default to
    the last two axes other than `axis`. Raises ValueError for ndim < 3, an axis out of
    range, plane axes that are not two different axes other than `axis`, and a min_iou
    outside (0, 1].
    """
    if ndim < 3:
        raise ValueError(
            f"Linking needs labels with at least 3 axes (slices of 2D planes); got {ndim}."
        )
    if (
        isinstance(axis, bool)
        or not isinstance(axis, int | np.integer)
        or not (-ndim <= axis < ndim)
    ):
        raise ValueError(
            f"axis must be an axis of the {ndim}D labels (-{ndim} to {ndim - 1}); got {axis!r}."
        )
    axis = int(axis) % ndim
    if plane_axes is None:
        plane = tuple(a for a in range(ndim) if a != axis)[-2:]
    else:
        plane = tuple(plane_axes)
        valid = all(
            not isinstance(a, bool) and isinstance(a, int | np.integer) and -ndim <= a < ndim
            for a in plane
        )
        plane = tuple(int(a) % ndim for a in plane) if valid else ()
        if len(plane) != 2 or plane[0] == plane[1] or axis in plane:
            raise ValueError(
                f"plane_axes must be two different axes of the {ndim}D labels other than "
                f"the linking axis {axis}, as (row_axis, col_axis); got {plane_axes!r}."
            )
    if (
        isinstance(min_iou, bool)
        or not isinstance(min_iou, numbers.Real)
        or not (0 < min_iou <= 1)
    ):
        raise ValueError(f"min_iou must be a number in (0, 1]; got {min_iou!r}.")
    return axis, (plane[0], plane[1])


def link_slices(
    labels: np.ndarray,
    axis: int = 0,
    min_iou: float = 0.5,
    *,
    plane_axes: Sequence[int] | None = None,
) -> np.ndarray:
    """Give an object the id of the object it overlaps in the slice before.

    labels: an integer array (any integer dtype, values >= 0, 0 the background) of
        ndim >= 3, e.g. (Z, Y, X) or (T, Z, Y, X): 2D slices stacked along `axis`. Each
        id within one 2D plane is one object; ids may or may not repeat across planes
        (`napari_sam.automatic.segment_everything_slices` makes them unique).
    axis: the axis to link along (z for a volume; negative counts from the end).
    min_iou: the least intersection over union, in (0, 1], for two objects of
        consecutive slices to be the same object.
    plane_axes: the (row, col) axes of the 2D planes; default the last two axes other
        than `axis`. Every index of the remaining axes (e.g. t when linking a
        (T, Z, Y, X) stack along z) is linked on its own: no id is shared between them.

    Matching, for each pair of consecutive slices k, k+1: the IoU of every object of
    slice k with every object of slice k+1 (from one contingency table of their pixels),
    then the one-to-one assignment that maximises the summed IoU among the pairs with
    IoU >= min_iou (scipy.optimize.linear_sum_assignment). A matched object of slice
    k+1 takes the id of its partner in slice k (already linked to slice k-1, and so on);
    every other object starts a new 3D object. So an object that splits keeps its id in
    the better-matching part, and an object that vanishes and reappears gets a new id.

    Returns labels of the same shape and dtype, 0 the background, 3D objects numbered
    consecutively from 1 in the order they first appear (the other axes in C order, then
    along `axis`, then by their id in the input plane).
    Raises TypeError for labels that are not integers (floats, bools), ValueError for
    negative labels, bad axes or min_iou (see `linking_axes`), and for more 3D objects
    than the dtype holds.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels must be an integer array (ids, 0 for background); got dtype "
            f"{labels.dtype}. Convert e.g. with labels.astype(np.int32) if they are ids."
        )
    axis, plane = linking_axes(labels.ndim, axis, min_iou, plane_axes)
    out = np.zeros(labels.shape, labels.dtype)
    if labels.size == 0:
        return out
    if labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 for background); got negative values.")
    # (..., slice, row, col) views of the input and the output: no copy.
    source = np.moveaxis(labels, [axis, *plane], [-3, -2, -1])
    target = np.moveaxis(out, [axis, *plane], [-3, -2, -1])
    limit = int(np.iinfo(labels.dtype).max)
    small_ids = int(labels.max()) <= 4 * source[..., 0, :, :].size
    next_id = 1
    for outer in np.ndindex(source.shape[:-3]):
        previous = None  # slice k's (local ids, areas, final id of each local id)
        for k in range(source.shape[-3]):
            local, areas = _local_ids(source[(*outer, k)].ravel(), small_ids)
            final = np.zeros(len(areas), np.int64)  # final id of each local id; 0 stays 0
            matched = np.zeros(len(areas), bool)
            matched[0] = True
            if previous is not None and len(areas) > 1 and len(previous[1]) > 1:
                prev_local, prev_areas, prev_final = previous
                rows, cols = _match(prev_local, prev_areas, local, areas, min_iou)
                final[cols] = prev_final[rows]
                matched[cols] = True
            fresh = np.flatnonzero(~matched)
            if next_id + len(fresh) - 1 > limit:
                raise ValueError(
                    f"More 3D objects than {labels.dtype} labels hold ({limit}): convert the "
                    "labels to a wider dtype (e.g. np.int32) first."
                )
            final[fresh] = np.arange(next_id, next_id + len(fresh))
            next_id += len(fresh)
            target[(*outer, k)] = final[local].reshape(source.shape[-2:])
            previous = (local, areas, final)
    return out


def _local_ids(plane: np.ndarray, small_ids: bool) -> tuple[np.ndarray, np.ndarray]:
    """A flat plane's ids as 0..m (0 the background, objects by increasing id) and the
    pixel count of each: ((P,) intp, (m + 1,) int64)."""
    if small_ids:  # ids up to a few times the pixel count: a lookup table is cheapest
        ids = plane.astype(np.intp, copy=False)
        counts = np.bincount(ids)
        objects = np.flatnonzero(counts[1:]) + 1
        table = np.zeros(len(counts), np.intp)
        table[objects] = np.arange(1, len(objects) + 1)
        areas = np.concatenate([counts[:1], counts[objects]])
        return table[ids], areas
    values, local = np.unique(plane, return_inverse=True)
    if values[0] != 0:  # no background: local 0 must still mean background
        local = local + 1
    local = local.astype(np.intp, copy=False).ravel()
    return local, np.bincount(local, minlength=len(values) + (values[0] != 0))


def _match(a, areas_a, b, areas_b, min_iou):
    """The matched (rows, cols) local ids of two planes' objects: one to one, IoU >=
    min_iou, the summed IoU largest."""
    from scipy.optimize import linear_sum_assignment

    na, nb = len(areas_a), len(areas_b)
    both = (a > 0) & (b > 0)
    pairs = a[both].astype(np.int64) * nb + b[both]
    if na * nb <= max(_DENSE_CELLS, a.size):
        counts = np.bincount(pairs, minlength=na * nb)
        pairs = np.flatnonzero(counts)
        overlap = counts[pairs]
    else:
        pairs, overlap = np.unique(pairs, return_counts=True)
    rows, cols = np.divmod(pairs, nb)
    iou = overlap / (areas_a[rows] + areas_b[cols] - overlap)
    keep = iou >= min_iou
    rows, cols, iou = rows[keep], cols[keep], iou[keep]
    # A pair whose two objects have no other candidate is always in the best assignment;
    # the Hungarian method only sees the rest (with min_iou >= 0.5 usually nothing).
    alone = (np.bincount(rows, minlength=na)[rows] == 1) & (
        np.bincount(cols, minlength=nb)[cols] == 1
    )
    rest_rows, rest_cols = rows[~alone], cols[~alone]
    if len(rest_rows) == 0:
        return rows, cols
    row_ids, r = np.unique(rest_rows, return_inverse=True)
    col_ids, c = np.unique(rest_cols, return_inverse=True)
    weights = np.zeros((len(row_ids), len(col_ids)))
    weights[r, c] = iou[~alone]
    best_r, best_c = linear_sum_assignment(weights, maximize=True)
    real = weights[best_r, best_c] > 0  # zero weights pad the matrix: no candidate pair
    return (
        np.concatenate([rows[alone], row_ids[best_r[real]]]),
        np.concatenate([cols[alone], col_ids[best_c[real]]]),
    )
