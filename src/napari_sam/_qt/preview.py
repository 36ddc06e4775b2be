"""The preview: a Labels layer above the image showing the candidate mask(s) of the view
as a yellow outline, repainted on every prediction.

The outline is drawn here, inside each mask's bounding box, rather than by napari's
`contour` (which recomputes it over the whole plane on every refresh), and only the
pixels that change are written, through `data_setitem`, which also updates only that part
of the texture: a click on a 1024 x 1024 image repaints an outline, not the plane.
"""

from __future__ import annotations

import numpy as np

from ..view import ViewSpec, mask_indices
from ._layers import PREVIEW_NAME, add_quietly, same_layer, style_preview, transform_kwargs

OUTLINE_WIDTH = 2  # px of the image: an outline, unlike committed labels, which are filled


def outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The pixels of an (H, W) bool mask within `width` px (4-connected steps) of its
    edge, the image border counting as an edge; computed inside its bounding box only,
    with array shifts (several times faster than a morphological erosion here)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    edge = np.zeros_like(mask, dtype=bool)
    if not rows.size:
        return edge
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    inner = np.pad(mask[box], 1)  # outside the box is background
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
    edge[box] = mask[box] & (~core | at_border)
    return edge


class Preview:
    """The preview layer of one widget (made when first needed, in the image's frame)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layer = None
        self._view: ViewSpec | None = None  # the view painted
        self._plane: np.ndarray | None = None  # what is painted there, (H, W) uint8

    def ensure(self, image, shape: tuple[int, ...]):
        """The preview layer for `image` (spatial `shape`), made or remade when missing or
        of another shape, just above the image."""
        layer = self.layer
        if layer is not None and layer in self.viewer.layers and layer.data.shape == shape:
            return layer
        from napari.layers import Labels

        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        layer = Labels(np.zeros(shape, np.uint8), name=PREVIEW_NAME, opacity=1.0,
                       blending="translucent", **transform_kwargs(image))  # fmt: skip
        style_preview(layer)
        self.layer = layer
        self._view, self._plane = None, None
        return add_quietly(self.viewer, layer, self.viewer.layers.index(image) + 1)

    def forget(self, layer) -> bool:
        """`layer` left the viewer; True when it was the preview."""
        if same_layer(layer, self.layer):
            self.layer, self._view, self._plane = None, None, None
            return True
        return False

    def show(self, masks: list[np.ndarray], view: ViewSpec | None) -> None:
        """Outline `masks` ((H, W) bool, in view pixels) on `view` (ids 1, 2, ...; earlier
        masks win where they overlap); no masks clears what was painted."""
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            return
        if self._view is not None and (not masks or view != self._view):
            self._paint(self._view, np.zeros_like(self._plane))
            self._view, self._plane = None, None
        if masks:
            plane = np.zeros(masks[0].shape, np.uint8)
            for i, mask in enumerate(masks):
                plane[outline(mask) & (plane == 0)] = (i % 254) + 1
            self._paint(view, plane)
            self._view, self._plane = view, plane

    def _paint(self, view: ViewSpec, plane: np.ndarray) -> None:
        old = self._plane if view == self._view and self._plane is not None else None
        changed = plane != 0 if old is None else plane != old
        if old is None and self._view is None:
            changed |= np.asarray(self._read(view)) != 0  # leftovers of an earlier layer
        if not changed.any():
            return
        indices = mask_indices(changed, view.displayed, view.slice_index, self.layer.ndim)
        self.layer.data_setitem(indices, plane[changed])

    def _read(self, view: ViewSpec) -> np.ndarray:
        key = [slice(None)] * self.layer.ndim
        for axis, index in view.slice_index.items():
            key[axis] = index
        plane = self.layer.data[tuple(key)]
        return plane.T if view.displayed[0] > view.displayed[1] else plane
