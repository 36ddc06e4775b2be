"""Shared pieces of the widget tests: docking the widget, adding prompts, reading the preview."""

from __future__ import annotations

import numpy as np

WIDGET = ("napari-sam-labeler", "Segment Anything")


def open_widget(viewer, model):
    """Dock the widget from the manifest, as a user does, and give it the model."""
    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    widget.set_model(model)
    return widget


def shown_preview(widget) -> np.ndarray:
    """What the preview shows, filled: the preview layer draws each mask's outline, and
    the masks of these tests (discs, boxes) are simply connected, so filling the outline
    gives the mask back. Same shape as the preview layer's data; ids kept."""
    from scipy.ndimage import binary_fill_holes

    data = np.asarray(widget.preview.layer.data)
    planes = data.reshape(-1, *data.shape[-2:])
    filled = np.zeros_like(planes)
    for i, plane in enumerate(planes):
        for label_id in np.unique(plane[plane > 0]):
            filled[i][binary_fill_holes(plane == label_id)] = label_id
    return filled.reshape(data.shape)


def add_point(widget, world, negative=False):
    """Add a prompt point at a world position, as a click in add mode does."""
    layer = widget.points_layer
    if negative != widget.negative:
        widget.toggle_polarity()
    layer.add(layer.world_to_data(np.asarray(world, float)))
    if negative:
        widget.toggle_polarity()


