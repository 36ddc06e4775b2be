"""Prompts drawn in napari layers -> 2D prompts in the pixel frame of the image view.

Pure numpy, no napari: every function takes layer data and the layers' transforms as
homogeneous matrices (data -> world, shape (D+1, D+1), as napari composes a layer's
scale, translate, rotate, shear and affine), plus the view of the image layer on screen
(`napari_sam.view.ViewSpec`: displayed axes and slice indices in the image's data axes).

The result is what `SamPredictor.predict` takes: points as (row, col) in pixels of the 2D
view (integers name pixel centres) with labels 1 (positive) / 0 (negative), and boxes as
(min_row, min_col, max_row, max_col). Prompts that lie on another slice are left out.

Layers of different dimensionality are aligned on their trailing axes, as napari does;
a 2D prompt layer over a 3D image applies to whichever slice is on screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from ..view import ViewSpec

__all__ = [
    "POLARITY",
    "BoxPrompts",
    "PointPrompts",
    "affine_matrix",
    "boxes_to_view",
    "points_to_view",
    "polarity_to_labels",
    "to_image_data",
]

POLARITY = "polarity"  # name of the points feature that holds "positive"/"negative"
_POSITIVE = {"positive", "pos", "+", "1", "true", "foreground", "fg"}
_NEGATIVE = {"negative", "neg", "-", "0", "false", "background", "bg"}

# A prompt belongs to a slice when it lies within half a pixel of its centre (napari
# draws points within the same distance; a point exactly between two slices shows on both).
SLICE_TOLERANCE = 0.5


class PointPrompts(NamedTuple):
    coords: np.ndarray  # (M, 2) float (row, col) in view pixels
    labels: np.ndarray  # (M,) int64, 1 = positive, 0 = negative
    indices: np.ndarray  # (M,) indices of the kept points in the layer's data


class BoxPrompts(NamedTuple):
    boxes: np.ndarray  # (M, 4) float (min_row, min_col, max_row, max_col)
    indices: np.ndarray  # (M,) indices of the kept shapes in the layer's data


def affine_matrix(
    ndim: int,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    linear: np.ndarray | None = None,
) -> np.ndarray:
    """A homogeneous (ndim+1, ndim+1) data -> world matrix: `linear @ diag(scale)`, then
    `translate`. For tests and scripts; the widget takes napari's own composed matrix."""
    matrix = np.eye(ndim + 1)
    lin = np.eye(ndim) if linear is None else np.asarray(linear, dtype=float)
    matrix[:ndim, :ndim] = lin @ np.diag(np.ones(ndim) if scale is None else scale)
    if translate is not None:
        matrix[:ndim, ndim] = translate
    return matrix


def _check_matrix(matrix, ndim: int, name: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (ndim + 1, ndim + 1):
        raise ValueError(
            f"{name} must be a ({ndim + 1}, {ndim + 1}) homogeneous matrix for {ndim}D data; "
            f"got shape {matrix.shape}."
        )
    return matrix


def _apply(matrix: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return coords @ matrix[:-1, :-1].T + matrix[:-1, -1]


def to_image_data(
    coords,
    layer_to_world,
    image_to_world,
    image_ndim: int,
    world_point: Sequence[float] | None = None,
) -> np.ndarray:
    """Map (N, D) coordinates of a layer into the data coordinates (N, image_ndim) of the
    image layer, through world coordinates.

    Axes are aligned on the right. When the prompt layer has fewer axes than the image,
    the missing leading world coordinates are taken from `world_point` (the viewer's
    current position, `viewer.dims.point`), i.e. the prompt lies on the slice on screen.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2:
        raise ValueError(f"coords must be (N, D); got shape {coords.shape}.")
    ndim = coords.shape[1]
    world = _apply(_check_matrix(layer_to_world, ndim, "layer_to_world"), coords)
    image_matrix = _check_matrix(image_to_world, image_ndim, "image_to_world")
    if ndim < image_ndim:
        if world_point is None or len(world_point) < image_ndim:
            raise ValueError(
                f"A {ndim}D prompt layer over a {image_ndim}D image needs the viewer's "
                "current world position (world_point) for the missing axes."
            )
        lead = np.asarray(world_point, dtype=float)[-image_ndim : len(world_point) - ndim]
        world = np.concatenate([np.broadcast_to(lead, (len(world), len(lead))), world], axis=1)
    elif ndim > image_ndim:
        world = world[:, ndim - image_ndim :]
    return _apply(np.linalg.inv(image_matrix), world)


def _on_slice(data_coords: np.ndarray, view: ViewSpec) -> np.ndarray:
    keep = np.ones(len(data_coords), dtype=bool)
    for axis, index in view.slice_index.items():
        keep &= np.abs(data_coords[:, axis] - index) <= SLICE_TOLERANCE
    return keep


def polarity_to_labels(values: Iterable | None, count: int) -> np.ndarray:
    """Point labels (1 positive, 0 negative) from a polarity feature: strings
    ("positive"/"negative", "+"/"-", ...), bools or 1/0. None -> all positive."""
    if values is None:
        return np.ones(count, dtype=np.int64)
    labels = []
    for value in values:
        text = str(value).strip().lower()
        if isinstance(value, (bool, np.bool_)):
            labels.append(int(value))
        elif text in _POSITIVE:
            labels.append(1)
        elif text in _NEGATIVE:
            labels.append(0)
        elif text in {"nan", "none", ""}:
            labels.append(1)  # a point added without a feature value: positive
        else:
            raise ValueError(f"Unknown point polarity {value!r}: use 'positive' or 'negative'.")
    if len(labels) != count:
        raise ValueError(f"Got {len(labels)} polarity values for {count} points.")
    return np.asarray(labels, dtype=np.int64)


def points_to_view(
    points,
    points_to_world,
    image_to_world,
    view: ViewSpec,
    image_ndim: int,
    polarity: Iterable | None = None,
    world_point: Sequence[float] | None = None,
) -> PointPrompts:
    """Points of a napari Points layer -> (row, col) prompts in the view, with labels.

    `points`: (N, D) layer data; `polarity`: the layer's polarity feature (None = all
    positive). Points off the slice on screen are left out; `indices` tells which stayed.
    """
    points = np.asarray(points, dtype=float)
    labels = polarity_to_labels(polarity, len(points))
    if points.size == 0:
        return PointPrompts(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.intp))
    data = to_image_data(points, points_to_world, image_to_world, image_ndim, world_point)
    keep = _on_slice(data, view)
    rows_cols = data[keep][:, list(view.displayed)]
    return PointPrompts(rows_cols, labels[keep], np.flatnonzero(keep))


def boxes_to_view(
    shapes: Sequence[np.ndarray],
    shape_types: Sequence[str] | None,
    shapes_to_world,
    image_to_world,
    view: ViewSpec,
    image_ndim: int,
    world_point: Sequence[float] | None = None,
) -> BoxPrompts:
    """Rectangles of a napari Shapes layer -> (min_row, min_col, max_row, max_col) boxes.

    `shapes`: the layer's data (a list of (V, D) vertex arrays); `shape_types`: the
    layer's `shape_type` list (None = all rectangles). Other shapes, and rectangles on
    other slices, are left out. A rectangle on a rotated image becomes its bounding box.
    """
    boxes, indices = [], []
    for i, vertices in enumerate(shapes):
        if shape_types is not None and shape_types[i] != "rectangle":
            continue
        vertices = np.asarray(vertices, dtype=float)
        data = to_image_data(vertices, shapes_to_world, image_to_world, image_ndim, world_point)
        if not _on_slice(data, view).all():
            continue
        corners = data[:, list(view.displayed)]
        boxes.append(np.concatenate([corners.min(axis=0), corners.max(axis=0)]))
        indices.append(i)
    if not boxes:
        return BoxPrompts(np.zeros((0, 4)), np.zeros(0, np.intp))
    return BoxPrompts(np.asarray(boxes), np.asarray(indices, dtype=np.intp))
