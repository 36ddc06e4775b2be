"""The Points and Shapes layers whose points and rectangles are SAM prompts: made on
demand in the image's frame, watched for changes, and read as prompts of the 2D view.

A point's polarity (positive / negative) is the Points layer's "polarity" feature; new
points get the widget's polarity, or negative with Ctrl held while clicking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QTimer

from ..interactive.prompts import POLARITY, BoxPrompts, PointPrompts, boxes_to_view, points_to_view
from ..view import ViewSpec
from ._layers import (
    BOXES_NAME,
    POINTS_NAME,
    add_quietly,
    data_to_world,
    layer_types,
    same_layer,
    transform_kwargs,
)
from .keys import NEGATIVE_MODIFIER

__all__ = ["NEGATIVE_COLOUR", "POSITIVE_COLOUR", "PromptLayers"]

POSITIVE_COLOUR, NEGATIVE_COLOUR = "lime", "magenta"


class PromptLayers:
    """The prompt layers of one widget. `on_change()` runs after every finished edit of
    their data; `on_polarity(negative)` when the polarity of new points changes."""

    def __init__(self, viewer, on_change: Callable[[], None],
                 on_polarity: Callable[[bool], None]) -> None:  # fmt: skip
        self.viewer = viewer
        self.points = None
        self.boxes = None
        self._on_change = on_change
        self._on_polarity = on_polarity
        self._negative = False
        self._pressing = False  # a click on the points layer is being added
        self._owned: set[int] = set()  # unique ids of the layers made here
        self._connected: list[tuple[object, Callable]] = []

    # -- layers --------------------------------------------------------------------------
    def ensure(self, image) -> bool:
        """Give `image` prompt layers of its dimensionality: ours made for an image of
        another one are set aside (removed when empty; their prompts belong to that image
        and stay with it), then an existing "SAM points" / "SAM boxes" layer of the right
        kind is used again (a widget reopened, or back on the earlier image), else one is
        made in `image`'s frame. True when a points layer was made."""
        Points, Shapes = layer_types()[2:]
        for layer in (self.points, self.boxes):
            ours = layer is not None and layer.unique_id in self._owned
            if ours and layer in self.viewer.layers and layer.ndim != image.ndim:
                self.forget(layer)
                if not len(layer.data):
                    self.viewer.layers.remove(layer)
        for layer in (self.points, self.boxes):  # empty ones of ours follow the image
            ours = layer is not None and layer.unique_id in self._owned
            if ours and layer in self.viewer.layers and not len(layer.data):
                _take_frame(layer, image)
        made = False
        if self.points is None or self.points not in self.viewer.layers:
            found = self._existing(Points, POINTS_NAME, image.ndim)
            made = found is None
            self.attach_points(found if found is not None else self._make_points(image))
        if self.boxes is None or self.boxes not in self.viewer.layers:
            found = self._existing(Shapes, BOXES_NAME, image.ndim)
            self.attach_boxes(found if found is not None else self._make_boxes(image))
        return made

    def _existing(self, kind, name: str, ndim: int):
        """The newest layer of `kind` named `name` (or "`name` [n]") with `ndim` axes."""
        found = [layer for layer in self.viewer.layers if isinstance(layer, kind)
                 and layer.name.split(" [")[0] == name and layer.ndim == ndim]  # fmt: skip
        if found:
            self._owned.add(found[-1].unique_id)
            return found[-1]
        return None

    def _size(self, image) -> float:
        shape = image.data[0].shape if image.multiscale else image.data.shape
        return float(max(3.0, max(shape[-3:-1] if image.rgb else shape[-2:]) / 60))

    def _make_points(self, image):
        import pandas as pd
        from napari.layers import Points

        polarity = pd.Series([], dtype=pd.CategoricalDtype(["positive", "negative"]))
        layer = Points(
            np.zeros((0, image.ndim)), ndim=image.ndim, name=POINTS_NAME,
            features=pd.DataFrame({POLARITY: polarity}), face_color=POLARITY,
            face_color_cycle={"positive": POSITIVE_COLOUR, "negative": NEGATIVE_COLOUR},
            border_color="black", size=self._size(image), **transform_kwargs(image),
        )  # fmt: skip
        self._owned.add(layer.unique_id)
        return add_quietly(self.viewer, layer)

    def _make_boxes(self, image):
        from napari.layers import Shapes

        layer = Shapes(
            ndim=image.ndim, name=BOXES_NAME, edge_color="yellow", face_color="transparent",
            edge_width=max(1.0, self._size(image) / 4), **transform_kwargs(image),
        )  # fmt: skip
        self._owned.add(layer.unique_id)
        return add_quietly(self.viewer, layer)

    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connected.append((emitter, callback))

    def attach_points(self, layer) -> None:
        """Use `layer` (a Points layer) for point prompts."""
        if same_layer(layer, self.points):
            return
        self.detach(self.points)
        self.points = layer
        self._connect(layer.events.data, self._on_data)
        if hasattr(layer.events, "feature_defaults"):
            self._connect(layer.events.feature_defaults, self._on_feature_defaults)
        if self._on_press not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_press)
        self._apply_polarity()

    def attach_boxes(self, layer) -> None:
        """Use `layer` (a Shapes layer) for box prompts (its rectangles)."""
        if same_layer(layer, self.boxes):
            return
        self.detach(self.boxes)
        self.boxes = layer
        self._connect(layer.events.data, self._on_data)

    def detach(self, layer) -> None:
        """Stop watching `layer` (its data stays)."""
        if layer is None:
            return
        ours = [getattr(layer.events, name, None) for name in ("data", "feature_defaults")]
        for emitter, callback in list(self._connected):
            if any(emitter == mine for mine in ours if mine is not None):
                with contextlib.suppress(TypeError, ValueError, RuntimeError):
                    emitter.disconnect(callback)
                self._connected.remove((emitter, callback))
        if self._on_press in getattr(layer, "mouse_drag_callbacks", []):
            layer.mouse_drag_callbacks.remove(self._on_press)

    def forget(self, layer) -> bool:
        """`layer` left the viewer: stop using it. True when it was a prompt layer."""
        found = False
        if same_layer(layer, self.points):
            self.detach(self.points)
            self.points, found = None, True
        if same_layer(layer, self.boxes):
            self.detach(self.boxes)
            self.boxes, found = None, True
        return found

    def cleanup(self) -> None:
        self.detach(self.points)
        self.detach(self.boxes)

    def _on_data(self, event=None) -> None:
        action = str(getattr(event, "action", "")).lower()
        if not action.endswith(("adding", "changing", "removing")):
            self._on_change()

    # -- reading and removing prompts ----------------------------------------------------
    def gather(self, image, view: ViewSpec, world_point) -> tuple[PointPrompts, BoxPrompts]:
        """The prompts on the view of `image` shown at `world_point`, in its (row, col)
        pixels, with the indices of the points and shapes they came from."""
        image_matrix = data_to_world(image)
        points = PointPrompts(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.intp))
        boxes = BoxPrompts(np.zeros((0, 4)), np.zeros(0, np.intp))
        if self.points is not None and self.points in self.viewer.layers and len(self.points.data):
            layer = self.points
            polarity = layer.features.get(POLARITY, None)
            points = points_to_view(
                layer.data, data_to_world(layer), image_matrix, view, image.ndim,
                polarity=None if polarity is None else list(polarity), world_point=world_point,
            )  # fmt: skip
        if self.boxes is not None and self.boxes in self.viewer.layers and len(self.boxes.data):
            layer = self.boxes
            boxes = boxes_to_view(layer.data, layer.shape_type, data_to_world(layer),
                                  image_matrix, view, image.ndim, world_point)  # fmt: skip
        return points, boxes

    def remove(self, point_indices=(), box_indices=()) -> None:
        """Remove the given points and shapes (through the layers, as a user would)."""
        for layer, indices in ((self.points, point_indices), (self.boxes, box_indices)):
            indices = {int(i) for i in indices}
            if layer is not None and indices:
                layer.selected_data = indices
                layer.remove_selected()

    def remove_all(self) -> None:
        """Remove every point and shape of the prompt layers."""
        self.remove(range(len(self.points.data)) if self.points is not None else (),
                    range(len(self.boxes.data)) if self.boxes is not None else ())  # fmt: skip

    # -- polarity ------------------------------------------------------------------------
    @property
    def negative(self) -> bool:
        """Whether new points are negative."""
        return self._negative

    @negative.setter
    def negative(self, value: bool) -> None:
        if bool(value) != self._negative:
            self._negative = bool(value)
            self._apply_polarity()
            self._on_polarity(self._negative)

    def _on_press(self, layer, event):
        """Ctrl-click adds a negative point: set the polarity the next point gets."""
        # Set on every press: napari copies the last selected point's features into
        # feature_defaults after an add, so a value set earlier does not last.
        self._pressing = True
        self._apply_polarity(self._negative or NEGATIVE_MODIFIER in set(event.modifiers))
        yield
        while event.type == "mouse_move":
            yield
        # napari adds the point while handling this release: restore the toggle after it.
        QTimer.singleShot(0, self._end_press)

    def _end_press(self) -> None:
        self._pressing = False
        self._apply_polarity()

    def _on_feature_defaults(self, event=None) -> None:
        """Keep new points' polarity the widget's, whatever napari copied from a selected
        point into feature_defaults (it does so after every add)."""
        layer = self.points
        if self._pressing or layer is None or POLARITY not in layer.feature_defaults:
            return
        if (str(layer.feature_defaults[POLARITY].iloc[0]) == "negative") != self._negative:
            self._apply_polarity()

    def _apply_polarity(self, negative: bool | None = None) -> None:
        layer = self.points
        if layer is None or POLARITY not in layer.features:
            return
        negative = self._negative if negative is None else negative
        layer.feature_defaults = {POLARITY: "negative" if negative else "positive"}


def _take_frame(layer, image) -> None:
    """Give an empty prompt layer `image`'s frame (scale, translate, rotate, shear,
    affine), so that its data coordinates are the image's pixels; a layer holding
    prompts keeps its frame (they stay where they were put in the world)."""
    if layer.ndim != image.ndim:
        return
    for name, value in transform_kwargs(image).items():
        setattr(layer, name, value)
