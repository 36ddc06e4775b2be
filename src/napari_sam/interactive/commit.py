"""Committing 2D masks of an image view into a labels array: where they land, which ids
they get, and refusing before anything is written when a commit cannot be done whole.

Pure numpy, no napari. The image and the labels may live in different frames: each has
its data -> world homogeneous matrix (shape (D+1, D+1), as napari composes a layer's
scale, translate, rotate, shear and affine), and a mask is resampled into the labels'
frame by nearest neighbour, so that it lands under the object in world space.

>>> mapping = view_to_labels(view, image_to_world, labels_to_world, labels.ndim)
>>> plan = plan_commit([mask], labels, mapping)      # raises CommitError, writes nothing
>>> for indices, label_id in plan.writes:
...     labels[indices] = label_id
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..view import ViewSpec
from .prompts import to_image_data

__all__ = [
    "CommitError",
    "CommitPlan",
    "PlaneMapping",
    "mask_to_labels_indices",
    "plan_commit",
    "plan_objects_commit",
    "unwritable_reason",
    "view_to_labels",
]

# Entries of the view -> labels matrix below this are rounding noise, not a dependence.
_TOLERANCE = 1e-9


class CommitError(ValueError):
    """A commit that cannot be done as asked; nothing has been written."""


@dataclass(frozen=True)
class PlaneMapping:
    """Where the pixels of a 2D image view lie in a labels array's data coordinates:
    `labels_coords = offset + matrix @ (row, col)`, an affine map into `ndim` axes."""

    matrix: np.ndarray  # (ndim, 2) float64
    offset: np.ndarray  # (ndim,) float64

    @property
    def ndim(self) -> int:
        return len(self.offset)


def view_to_labels(
    view: ViewSpec,
    image_to_world,
    labels_to_world,
    labels_ndim: int,
    world_point: Sequence[float] | None = None,
) -> PlaneMapping:
    """The affine map from (row, col) pixels of the image view `view` to the data
    coordinates of a labels layer, through world coordinates.

    `image_to_world` / `labels_to_world`: (D+1, D+1) homogeneous data -> world matrices
    of the image (D = its number of spatial axes) and of the labels. Axes are aligned on
    the right, as napari does; when the labels have more axes than the image, the
    missing leading world coordinates come from `world_point` (`viewer.dims.point`).
    """
    image_ndim = np.asarray(image_to_world).shape[0] - 1
    base = np.zeros(image_ndim)
    for axis, index in view.slice_index.items():
        if axis < image_ndim:
            base[axis] = index
    corners = np.repeat(base[None], 3, axis=0)  # (0, 0), (1, 0), (0, 1) in the view
    corners[1, view.displayed[0]] += 1.0
    corners[2, view.displayed[1]] += 1.0
    mapped = to_image_data(corners, image_to_world, labels_to_world, labels_ndim, world_point)
    matrix = np.stack([mapped[1] - mapped[0], mapped[2] - mapped[0]], axis=1)
    return PlaneMapping(matrix, mapped[0])


def mask_to_labels_indices(
    mask: np.ndarray, mapping: PlaneMapping, labels_shape: Sequence[int]
) -> tuple[np.ndarray, ...]:
    """Fancy indices of the labels pixels that a 2D view mask covers, resampled by
    nearest neighbour: a labels pixel belongs to the mask when its centre lies in a mask
    pixel. Pixels outside the labels array are left out.

    Raises `CommitError` when the view's plane is not a plane of the labels array (a
    rotation or shear that tilts it across the labels' axes) or misses it entirely.
    """
    mask = np.asarray(mask, dtype=bool)
    shape = tuple(int(n) for n in labels_shape)
    if len(shape) != mapping.ndim:
        raise ValueError(f"The mapping is for {mapping.ndim}D labels, not shape {shape}.")
    moving = np.flatnonzero(np.abs(mapping.matrix).max(axis=1) > _TOLERANCE)
    if len(moving) != 2:
        raise CommitError(
            "The image's plane on screen is not a plane of the labels layer: their "
            "transforms tilt one against the other, so the mask cannot be written slice "
            "by slice."
        )
    fixed = {}
    for axis in range(len(shape)):
        if axis in moving:
            continue
        index = int(np.floor(mapping.offset[axis] + 0.5))
        if not 0 <= index < shape[axis]:
            raise CommitError(
                f"A slice of the mask (the slice on screen, or one propagated to) lies "
                f"outside the labels layer: axis {axis} at {mapping.offset[axis]:.2f}, "
                f"where the layer has {shape[axis]} planes. Commit into labels that cover "
                "the image (in napari: choose another output layer, or a new one)."
            )
        fixed[axis] = index
    empty = tuple(np.zeros(0, np.intp) for _ in shape)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return empty
    # The labels pixels whose centres can fall in the mask's bounding box.
    sub = mapping.matrix[moving]  # (2, 2): view (row, col) -> the two moving axes
    box = np.array(
        [[r, c] for r in (rows[0] - 0.5, rows[-1] + 0.5) for c in (cols[0] - 0.5, cols[-1] + 0.5)]
    )
    reach = box @ sub.T + mapping.offset[moving]
    low = np.maximum(np.floor(reach.min(axis=0)), 0).astype(int)
    high = np.minimum(np.ceil(reach.max(axis=0)), np.array(shape)[moving] - 1).astype(int)
    if (high < low).any():
        return empty
    grid = np.stack(
        np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1), indexing="ij"),
        axis=-1,
    ).reshape(-1, 2)
    view_rc = (grid - mapping.offset[moving]) @ np.linalg.inv(sub).T
    # floor(x + 0.5): a centre exactly between two pixels takes the later one, always.
    nearest = np.floor(view_rc + 0.5).astype(np.intp)
    inside = (
        (nearest[:, 0] >= 0)
        & (nearest[:, 0] < mask.shape[0])
        & (nearest[:, 1] >= 0)
        & (nearest[:, 1] < mask.shape[1])
    )
    grid, nearest = grid[inside], nearest[inside]
    grid = grid[mask[nearest[:, 0], nearest[:, 1]]]
    indices: list[np.ndarray] = [np.empty(0, np.intp)] * len(shape)
    indices[moving[0]], indices[moving[1]] = grid[:, 0], grid[:, 1]
    for axis, index in fixed.items():
        indices[axis] = np.full(len(grid), index, dtype=np.intp)
    return tuple(indices)


def unwritable_reason(data, multiscale: bool = False) -> str | None:
    """Why `data` cannot take an in-place, undoable edit, or None when it can.

    Writable means an in-memory, writeable numpy array: lazy arrays (dask, zarr, ...),
    multiscale pyramids and read-only arrays are refused.
    """
    if multiscale:
        return "holds a multiscale pyramid, which cannot be edited in place"
    if not isinstance(data, np.ndarray):
        kind = f"{type(data).__module__.split('.')[0]}.{type(data).__name__}"
        return f"holds a {kind} array (lazy or on disk), which cannot be edited in place"
    if not data.flags.writeable:
        return "holds a read-only array"
    if data.dtype.kind not in "iu":
        return f"holds {data.dtype} values, not integer label ids"
    return None


@dataclass
class CommitPlan:
    """What a commit will write: (indices, id) per object, in order; `ids` the new ids.
    `outside`: masks with no pixel inside the labels array; `covered`: masks whose pixels
    are all labelled already (without overwrite)."""

    writes: list[tuple[tuple[np.ndarray, ...], int]] = field(default_factory=list)
    outside: int = 0
    covered: int = 0
    sources: list[int] = field(default_factory=list)  # the input object of each write

    @property
    def ids(self) -> list[int]:
        return [label_id for _, label_id in self.writes]


def plan_commit(
    masks: Sequence[np.ndarray],
    labels: np.ndarray,
    mapping: PlaneMapping,
    overwrite: bool = False,
) -> CommitPlan:
    """Plan writing each 2D view mask into `labels` (an integer array) with a new id:
    ids start above the array's maximum, one per mask that has a pixel to write; without
    `overwrite` only pixels that are 0 are written (so masks drawn later do not erase
    earlier ones either).

    Reads `labels` but writes nothing. Raises `CommitError` when the ids would not fit
    the dtype (then nothing of the batch may be written), and the errors of
    `mask_to_labels_indices`.
    """
    return plan_objects_commit([[(mask, mapping)] for mask in masks], labels, overwrite)


def plan_objects_commit(
    objects: Sequence[Sequence[tuple[np.ndarray, PlaneMapping]]],
    labels: np.ndarray,
    overwrite: bool = False,
) -> CommitPlan:
    """`plan_commit` for objects made of several 2D masks, each with its own mapping
    (the slices of an object propagated through a stack): one new id per object, all
    its slices written in one step. Same rules and errors as `plan_commit`."""
    dtype = labels.dtype
    if dtype.kind not in "iu":
        raise CommitError(f"The labels hold {dtype} values; labels must be integer ids.")
    next_id = int(np.max(labels, initial=0)) + 1
    plan = CommitPlan()
    claimed = np.zeros(0, np.intp)  # flat indices an earlier mask of this batch writes
    for number, parts in enumerate(objects):
        pieces = [mask_to_labels_indices(m, mapping, labels.shape) for m, mapping in parts]
        indices = tuple(np.concatenate(axis) for axis in zip(*pieces, strict=True)) \
            if pieces else ()  # fmt: skip
        if not indices or indices[0].size == 0:
            plan.outside += 1
            continue
        if not overwrite:
            flat = np.ravel_multi_index(indices, labels.shape)
            free = (np.asarray(labels[indices]) == 0) & ~np.isin(flat, claimed)
            indices = tuple(axis[free] for axis in indices)
            claimed = np.concatenate([claimed, flat[free]])
        if indices[0].size == 0:
            plan.covered += 1
            continue
        plan.writes.append((indices, next_id))
        plan.sources.append(number)
        next_id += 1
    limit = np.iinfo(dtype).max
    if plan.writes and plan.ids[-1] > limit:
        raise CommitError(
            f"The labels layer's {dtype} holds ids up to {limit}, but {len(plan.writes)} new "
            f"object(s) need ids {plan.ids[0]} to {plan.ids[-1]}. Nothing was written; "
            "convert the layer to a larger type (layer.data = layer.data.astype('int32')) "
            "or choose a new labels layer as output."
        )
    return plan
