"""napari layers as the session needs them: frames (data -> world matrices), the layers
the plugin makes (names, transforms, the preview's look), and messages about them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..view import ViewSpec
from ._messages import UserError

__all__ = [
    "BOXES_NAME",
    "POINTS_NAME",
    "PREVIEW_NAME",
    "add_quietly",
    "data_to_world",
    "describe_frame",
    "layer_types",
    "same_layer",
    "spatial_shape",
    "style_preview",
    "transform_kwargs",
    "view_on_screen",
]

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
PREVIEW_COLOUR = (1.0, 0.85, 0.0, 1.0)  # one yellow for every candidate mask


def layer_types():
    """(Image, Labels, Points, Shapes), imported when first needed."""
    from napari.layers import Image, Labels, Points, Shapes

    return Image, Labels, Points, Shapes


def same_layer(a, b) -> bool:
    """Whether two references name the same layer. napari hands plugins proxies of its
    objects, a new one on each access, so identity (`is`) cannot tell."""
    return a is not None and b is not None and a == b


def data_to_world(layer) -> np.ndarray:
    """The layer's (D+1, D+1) data -> world homogeneous matrix (scale, translate, rotate,
    shear, affine), measured through the public `data_to_world` on the origin and the
    unit vectors."""
    ndim = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), dtype=float)[-ndim:]
    matrix = np.eye(ndim + 1)
    for axis in range(ndim):
        unit = np.zeros(ndim)
        unit[axis] = 1.0
        matrix[:ndim, axis] = np.asarray(layer.data_to_world(unit), dtype=float)[-ndim:] - origin
    matrix[:ndim, ndim] = origin
    return matrix


def transform_kwargs(layer) -> dict[str, Any]:
    """Keyword arguments giving a new layer the same frame as `layer`."""
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
        "units": layer.units,
    }


def style_preview(layer) -> None:
    """The preview is in one colour (and an outline, see `preview.py`), so it never looks
    like a committed label (filled, in the random colours napari gives label ids)."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(
        color_dict={None: PREVIEW_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)}
    )


def describe_frame(layer) -> str:
    """A layer's name and transform, for messages about frames that do not fit."""
    parts = [f"scale {tuple(np.round(layer.scale, 4).tolist())}"]
    parts.append(f"translate {tuple(np.round(layer.translate, 4).tolist())}")
    linear = np.asarray(layer.affine.affine_matrix)[:-1, :-1] @ np.asarray(layer.rotate)
    if not np.allclose(linear, np.eye(layer.ndim)) or np.any(layer.shear):
        parts.append("rotated/sheared/affine")
    return f"{layer.name!r}: {', '.join(parts)}"


def add_quietly(viewer, layer, index: int | None = None):
    """Add `layer` (at `index`) without changing which layer is active, so that a click
    in progress on the points layer goes on there."""
    active = viewer.layers.selection.active
    if index is None:
        viewer.add_layer(layer)
    else:
        viewer.layers.insert(index, layer)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def spatial_shape(layer) -> tuple[int, ...]:
    """The shape of a layer's data without its RGB(A) axis (level 0 of a pyramid)."""
    shape = tuple((layer.data[0] if layer.multiscale else layer.data).shape)
    return shape[:-1] if layer.rgb else shape


def view_on_screen(viewer, layer) -> ViewSpec:
    """The 2D view of `layer` the viewer shows: its displayed data axes and the index of
    every other axis (the channel axis too: commits land at its slider position).
    Raises UserError in the 3D view."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise UserError("clicks work in the 2D view; switch the viewer to 2D to annotate.")
    offset = dims.ndim - layer.ndim
    displayed = [axis - offset for axis in dims.displayed if axis - offset >= 0]
    if len(displayed) != 2:
        raise UserError("The image layer must have two displayed axes.")
    position = layer.world_to_data(dims.point)
    shape = spatial_shape(layer)
    index = {axis: int(np.clip(np.round(position[axis]), 0, shape[axis] - 1))
             for axis in range(len(shape)) if axis not in displayed}  # fmt: skip
    return ViewSpec(displayed, index)
