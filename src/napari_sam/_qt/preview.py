"""The preview: a Labels layer above the image showing the candidate mask(s) of the view
as a yellow outline, repainted on every prediction.

The outline is drawn here, inside each mask's bounding box, rather than by napari's
`contour` (which recomputes it over the whole plane on every refresh), and only the
pixels that change are written, through `data_setitem`, which also updates only that part
of the texture: a click on a 1024 x 1024 image repaints an outline, not the plane.
"""

from __future__ import annotations

import numpy as np

from ..view import ViewSpec
from ._layers import PREVIEW_NAME, add_quietly, same_layer, style_preview, transform_kwargs

OUTLINE_WIDTH = 2  # px of the image: an outline, unlike committed labels, which are filled


def outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The pixels of an (H, W) bool mask within `width` px (4-connected steps) of its
    edge, the image border counting as an edge, as an (H, W) bool array."""
    edge = np.zeros_like(mask, dtype=bool)
    rows, cols = outline_pixels(mask, width)
    edge[rows, cols] = True
    return edge


def outline_pixels(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> tuple[np.ndarray, ...]:
    """(rows, cols) of `outline(mask)`, computed inside the mask's bounding box only, with
    array shifts (several times faster than a morphological erosion here)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    inner = np.pad(crop, 1)  # outside the box is background
    for _ in range(width):
        core = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1]
        core &= inner[1:-1, :-2] & inner[1:-1, 2:]
        inner = np.pad(core, 1)
    at_border = np.zeros_like(core)  # the image border is an edge too
    if rows[0] == 0:
        at_border[:width] = True
    if rows[-1] == mask.shape[0] - 1:
        at_border[-width:] = True
    if cols[0] == 0:
        at_border[:, :width] = True
    if cols[-1] == mask.shape[1] - 1:
        at_border[:, -width:] = True
    found_rows, found_cols = np.nonzero(crop & (~core | at_border))
    return found_rows + rows[0], found_cols + cols[0]


class Preview:
    """The preview layer of one widget (made when first needed, in the image's frame)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layer = None
        self._view: ViewSpec | None = None  # the view painted
        self._painted: tuple | None = None  # (rows, cols, ids) painted on that view

    def ensure(self, image, shape: tuple[int, ...]):
        """The preview layer for `image` (spatial `shape`), made or remade when missing or
        of another shape, just above the image."""
        layer = self.layer
        if layer is not None and layer in self.viewer.layers and layer.data.shape == shape:
            return layer
        from napari.layers import Labels

        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        for old in self.viewer.layers:  # left by a widget closed before: used again
            if (
                isinstance(old, Labels)
                and old.name.split(" [")[0] == PREVIEW_NAME
                and (old.data.shape == shape and isinstance(old.data, np.ndarray))
            ):
                old.data[...] = 0
                old.refresh()
                self.layer, self._view, self._painted = old, None, None
                return old
        layer = Labels(np.zeros(shape, np.uint8), name=PREVIEW_NAME, opacity=1.0,
                       blending="translucent", **transform_kwargs(image))  # fmt: skip
        style_preview(layer)
        self.layer = layer
        self._view, self._painted = None, None
        return add_quietly(self.viewer, layer, self.viewer.layers.index(image) + 1)

    def forget(self, layer) -> bool:
        """`layer` left the viewer; True when it was the preview."""
        if same_layer(layer, self.layer):
            self.layer, self._view, self._painted = None, None, None
            return True
        return False

    def show(self, masks: list[np.ndarray], view: ViewSpec | None) -> None:
        """Outline `masks` ((H, W) bool, in view pixels) on `view` (ids 1, 2, ...; earlier
        masks win where they overlap); no masks clears what was painted."""
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return
        rows, cols, values = _outline_all(masks)
        if self._view is not None:  # unpaint what the new outline does not cover
            old_rows, old_cols, _ = self._painted
            stale = np.ones(len(old_rows), bool)
            if masks and view == self._view:
                width = masks[0].shape[1]
                stale = ~np.isin(old_rows * width + old_cols, rows * width + cols)
            self._write(self._view, old_rows[stale], old_cols[stale], 0)
        if masks:
            self._write(view, rows, cols, values)
        self._view, self._painted = (view, (rows, cols, values)) if masks else (None, None)

    def _write(self, view: ViewSpec, rows, cols, values) -> None:
        if len(rows):
            indices: list = [None] * self.layer.ndim
            indices[view.displayed[0]], indices[view.displayed[1]] = rows, cols
            for axis, index in view.slice_index.items():
                indices[axis] = np.full(len(rows), index, np.intp)
            self.layer.data_setitem(tuple(indices), values)


def _outline_all(masks: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """(rows, cols, ids) of the masks' outlines, id i + 1 for mask i; the first mask wins
    a pixel several outlines share."""
    if not masks:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.uint8)
    parts = [(*outline_pixels(mask), i) for i, mask in enumerate(masks)]
    rows = np.concatenate([r for r, _, _ in parts])
    cols = np.concatenate([c for _, c, _ in parts])
    ids = np.concatenate([np.full(len(r), (i % 254) + 1, np.uint8) for r, _, i in parts])
    _, first = np.unique(rows * masks[0].shape[1] + cols, return_index=True)
    return rows[first], cols[first], ids[first]
