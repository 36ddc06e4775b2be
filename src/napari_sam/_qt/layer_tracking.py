"""Which napari layers the Segment Anything widget works on: the image (the active one,
or the one chosen), the prompt layers, the output, and what happens when layers come and
go. A mixin of `SamWidget` (its `image_layer`, `points_layer` and `boxes_layer` are the
widget's public API)."""

from __future__ import annotations

from qtpy.QtCore import QTimer

from ._layers import layer_types, same_layer, spatial_shape
from .sam_controls import show_channels_row

__all__ = ["LayerTracking"]


class LayerTracking:
    """Layer choices of the widget, kept in step with the viewer's layer list."""

    def _refresh_layer_choices(self, event=None) -> None:
        if self.closed:
            return
        Image, Labels, Points, Shapes = layer_types()
        layers = list(self.viewer.layers)
        of = lambda kind: [layer for layer in layers if isinstance(layer, kind)]  # noqa: E731
        self.image_combo.set_layers(of(Image), self._image_layer)
        self.points_combo.set_layers(of(Points), self.prompts.points)
        self.boxes_combo.set_layers(of(Shapes), self.prompts.boxes)
        outputs = [la for la in of(Labels) if not same_layer(la, self.preview.layer)]
        self.output_combo.set_layers(outputs, self._output_layer)

    def _on_layer_inserted(self, event=None) -> None:
        self._refresh_layer_choices()
        layer = getattr(event, "value", None)
        if self._image_layer is None and isinstance(layer, layer_types()[0]):
            self.image_layer = layer

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if same_layer(layer, self._image_layer):
            self._image_layer = None
            self.encoder.cancel()
            self._reset_prediction()
            images = [la for la in self.viewer.layers if isinstance(la, layer_types()[0])]
            if images:
                self.image_layer = images[-1]
        if self.prompts.forget(layer):
            self._reset_prediction()
            QTimer.singleShot(0, self._ensure_prompt_layers)
        self.preview.forget(layer)
        if same_layer(layer, self._output_layer):
            self._output_layer = None
        self._outputs_by_image = [
            pair for pair in self._outputs_by_image
            if not (same_layer(layer, pair[0]) or same_layer(layer, pair[1]))
        ]  # fmt: skip
        self._refresh_layer_choices()

    def _on_active_layer(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if isinstance(layer, layer_types()[0]) and not same_layer(layer, self._image_layer):
            self.image_layer = layer

    def _on_image_combo(self, index: int) -> None:
        layer = self.image_combo.layer(index)
        if layer is not None and not same_layer(layer, self._image_layer):
            self.image_layer = layer

    def _on_prompt_combo(self, _index: int = 0) -> None:
        points, boxes = self.points_combo.layer(), self.boxes_combo.layer()
        if points is not None:
            self.prompts.attach_points(points)
        if boxes is not None:
            self.prompts.attach_boxes(boxes)
        self._reset_prediction()
        self.schedule_update()

    def _on_output_combo(self, _index: int) -> None:
        self._output_layer = self.output_combo.layer()

    @property
    def image_layer(self):
        """The Image layer annotated (the active one when the widget opened)."""
        return self._image_layer

    @image_layer.setter
    def image_layer(self, layer) -> None:
        # Each image keeps its own output: commits on another image never land in the
        # labels of the one before (made for other pixels, maybe another shape).
        self._remember_output()
        self._image_layer = layer
        self._output_layer = self._output_for(layer)
        show_channels_row(self, layer)
        self.session.forget_pixels()
        self._reset_prediction()
        self._refresh_layer_choices()
        # refresh() after an edit in place (and every re-slicing) emits set_data.
        for emitter in (layer.events.data, layer.events.set_data):
            if (emitter, self._on_image_data) not in self._connected:
                self.connect_event(emitter, self._on_image_data)
        self._ensure_prompt_layers()
        self.schedule_update()

    def _remember_output(self) -> None:
        """Note the output layer of the current image, for when it is chosen again."""
        image, output = self._image_layer, self._output_layer
        pairs = [pair for pair in self._outputs_by_image if not same_layer(pair[0], image)]
        if image is not None and output is not None:
            pairs.append((image, output))
        self._outputs_by_image = pairs

    def set_output_for(self, image, output) -> None:
        """Make `output` (a Labels layer) the output of `image`: now, when `image` is
        the current image, else when it is chosen again (a job that ends after the user
        moved to another image must not hand that image its result)."""
        if same_layer(image, self._image_layer):
            self.output_layer = output
            return
        others = [pair for pair in self._outputs_by_image if not same_layer(pair[0], image)]
        self._outputs_by_image = [*others, (image, output)]

    def _output_for(self, image):
        """The output layer last used with `image` while it is still in the viewer, else
        None (the next commit makes "<image> labels")."""
        for known, output in self._outputs_by_image:
            if same_layer(known, image) and output in self.viewer.layers:
                return output
        return None

    def _on_image_data(self, event=None) -> None:
        self.session.forget_pixels()
        self.schedule_update()

    def _ensure_prompt_layers(self) -> None:
        """Make the prompt layers when missing (or made for an image of other ndim)."""
        image = self._image_layer
        if self.closed or image is None:
            return
        active = self.viewer.layers.selection.active
        if self.prompts.ensure(image):
            self.viewer.layers.selection.active = self.prompts.points
            self.prompts.points.mode = "add"
        elif active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        # Made with the prompt layers (about 0.2 s of the GUI thread): not on the first
        # click, which should show its mask at once, nor while an embedding is computed.
        self.preview.ensure(image, spatial_shape(image))
        self._refresh_layer_choices()

    @property
    def points_layer(self):
        """The Points layer whose points are prompts (made when missing)."""
        if self.prompts.points is None or self.prompts.points not in self.viewer.layers:
            self._ensure_prompt_layers()
        return self.prompts.points

    @points_layer.setter
    def points_layer(self, layer) -> None:
        self.prompts.attach_points(layer)
        self._refresh_layer_choices()
        self.schedule_update()

    @property
    def boxes_layer(self):
        """The Shapes layer whose rectangles are box prompts (made when missing)."""
        if self.prompts.boxes is None or self.prompts.boxes not in self.viewer.layers:
            self._ensure_prompt_layers()
        return self.prompts.boxes

    @boxes_layer.setter
    def boxes_layer(self, layer) -> None:
        self.prompts.attach_boxes(layer)
        self._refresh_layer_choices()
        self.schedule_update()
