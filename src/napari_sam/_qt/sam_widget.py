"""The "Segment Anything" dock widget: click on an object, see its mask, commit it as a label.

napari glue only: the work is done by the scripting API (`view`, `prompts`, `embeddings`,
`interactive`, `predictor`), which knows nothing of napari. torch is imported when the
widget is created, not when napari reads the manifest.

Threads: model loading and the image encoder run in napari worker threads with a
cancelable progress bar in the activity dock; the decoder (milliseconds) runs in the GUI
thread on every prompt change.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._llvm_guard import hide_triton_if_llvm_is_loaded
from .._messages import UserError as _UserError
from .._messages import notify as _notify
from ._workers import cleanup_at_exit, start_worker
from ..interactive.commit import CommitError, plan_commit, unwritable_reason, view_to_labels
from ..embeddings import EmbeddingCache, fingerprint
from ..interactive import (
    Candidate,
    PromptSet,
    best_index,
    prompts_grew,
    rank_candidates,
)
from ..interactive.prompts import POLARITY, boxes_to_view, points_to_view
from ..view import ViewSpec, extract_view

if TYPE_CHECKING:
    import napari

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
NEW_LAYER = "(new labels layer)"
LOCAL_FILE = "local file..."
POSITIVE_COLOUR, NEGATIVE_COLOUR = "lime", "magenta"

# Keys no napari layer (Points, Shapes, Labels, Image) nor the viewer binds by default.
KEYS = {
    "K": ("commit", "commit the preview as a new label"),
    "Q": ("clear", "clear prompts and preview"),
    "N": ("toggle_polarity", "toggle negative / positive points"),
    "G": ("next_candidate", "next candidate"),
    "8": ("select_whole", "whole"),
    "9": ("select_part", "part"),
    "0": ("select_subpart", "subpart"),
}
NEGATIVE_MODIFIER = "Control"  # Ctrl-click adds a negative point


def _layer_types():
    from napari.layers import Image, Labels, Points, Shapes

    return Image, Labels, Points, Shapes


def _data_to_world(layer) -> np.ndarray:
    """The layer's data -> world homogeneous matrix (scale, translate, rotate, shear, affine),
    measured through the public `data_to_world` on the origin and the unit vectors."""
    ndim = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), dtype=float)[-ndim:]
    matrix = np.eye(ndim + 1)
    for axis in range(ndim):
        unit = np.zeros(ndim)
        unit[axis] = 1.0
        matrix[:ndim, axis] = np.asarray(layer.data_to_world(unit), dtype=float)[-ndim:] - origin
    matrix[:ndim, ndim] = origin
    return matrix


def _transform_kwargs(layer, drop_last: bool = False) -> dict[str, Any]:
    return {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
        "units": layer.units,
    }


PREVIEW_COLOUR = (1.0, 0.85, 0.0, 1.0)  # one yellow for every candidate mask
PREVIEW_CONTOUR = 2  # px: an outline, unlike committed labels, which are filled


def _style_preview(layer) -> None:
    """The preview is an outline in one colour, so it never looks like a committed label
    (filled, in the random colours napari gives label ids)."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(
        color_dict={None: PREVIEW_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)}
    )
    layer.contour = PREVIEW_CONTOUR


def _describe_frame(layer) -> str:
    """A layer's name and transform, for messages about frames that do not fit."""
    parts = [f"scale {tuple(np.round(layer.scale, 4).tolist())}"]
    parts.append(f"translate {tuple(np.round(layer.translate, 4).tolist())}")
    linear = np.asarray(layer.affine.affine_matrix)[:-1, :-1] @ np.asarray(layer.rotate)
    if not np.allclose(linear, np.eye(layer.ndim)) or np.any(layer.shear):
        parts.append("rotated/sheared/affine")
    return f"{layer.name!r}: {', '.join(parts)}"


def _same(a, b) -> bool:
    """Whether two references name the same layer. napari hands plugins proxies of its
    objects, a new one on each access, so identity (`is`) cannot tell."""
    return a is not None and b is not None and a == b


class _Relay(QObject):
    """Carries progress from worker threads to the GUI thread."""

    download = Signal(int, int)
    encoded_blocks = Signal(int)


class _EncodingCancelled(Exception):
    """Raised between encoder blocks when the user cancelled the embedding."""


def model_choices(marked: bool) -> list[tuple[str, str]]:
    """(label, data) of every model a widget offers: the zoo's names (`marked`: with
    "(bundled)" or "(cached)" where no download is needed), fine-tuned checkpoints
    (data: their path), then "local file..."."""
    from ..training.finetuning import finetuned_models
    from ..zoo import is_downloaded, registry

    choices = []
    for name, entry in registry().items():
        note = " (bundled)" if entry.bundled else " (cached)" if is_downloaded(entry) else ""
        choices.append((name + note if marked else name, name))
    choices += [(f"{name} (fine-tuned)", str(path)) for name, path in finetuned_models().items()]
    return [*choices, (LOCAL_FILE, LOCAL_FILE)]


def device_choices() -> list[str]:
    """ "auto" and the devices this machine has."""
    from ..zoo import available_devices

    return ["auto", *available_devices()]


class SamWidget(QWidget):
    """Segment Anything in napari. Scripting:

    >>> widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler", "Segment Anything")[1]
    >>> widget.set_model("vit_b_lm")           # a zoo name, a checkpoint path or a Sam
    >>> widget.compute_embedding(wait=True)
    >>> widget.points_layer.add([[120, 80]])   # a positive point, in world coordinates
    >>> widget.select("part")
    >>> widget.commit()
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        hide_triton_if_llvm_is_loaded()  # napari's canvas may have loaded Mesa's libLLVM
        self.viewer = napari_viewer
        self.cache = EmbeddingCache()
        self._model = None
        self._model_id = 0
        self._model_name = ""
        self._predictor = None
        self._image_layer = None
        self._points_layer = None
        self._boxes_layer = None
        self._preview_layer = None
        self._output_layer = None
        self._candidates: list[Candidate] = []
        self._selected = -1
        self._objects: list[Candidate] = []  # one per box in "one object per box" mode
        self._prediction_view: ViewSpec | None = None
        self._prediction_point: tuple[float, ...] = ()  # viewer.dims.point of that view
        self._prediction_points: np.ndarray = np.zeros(0, np.intp)
        self._prediction_boxes: np.ndarray = np.zeros(0, np.intp)
        self._last_prompts: PromptSet | None = None
        self._last_logits: np.ndarray | None = None
        self._preview_view: ViewSpec | None = None
        self._negative = False
        self._pressing = False  # a click on the points layer is being added
        self._fingerprints: dict[tuple, tuple] = {}  # of lazy data only; numpy is rehashed
        self._pixels_generation = 0  # bumped whenever those fingerprints are forgotten
        # The embedding of the view last encoded: kept whatever the cache's budget.
        self._current_embedding: tuple[tuple, Any] | None = None
        self._encode_worker = None
        self._encode_key = None
        self._encode_progress = None
        self._load_worker = None
        self._load_progress = None
        self._load_cancelled = False
        self._load_generation = 0  # a newer set_model supersedes the loads before it
        self._model_requested = False  # a model asked for wins over the deferred default
        self._load_error: Exception | None = None
        self._bound_keys: list[str] = []
        self._owned: set[int] = set()
        self._combo_layers: dict[int, list] = {}  # ids of the layers this widget created
        self._connected: list[tuple[Any, Any]] = []
        self._closed = False
        self._updating = False
        self._update_pending = False
        self._relay = _Relay()
        self._relay.download.connect(self._on_download_progress)
        self._relay.encoded_blocks.connect(self._on_encoded_blocks)
        self.last_decode_seconds = 0.0
        self._encode_started = 0.0

        self._build_ui()
        self._connect(self.viewer.layers.events.inserted, self._on_layers_changed)
        self._connect(self.viewer.layers.events.removed, self._on_layer_removed)
        self._connect(self.viewer.layers.selection.events.active, self._on_active_layer)
        self._connect(self.viewer.dims.events.current_step, self._on_dims_changed)
        self._connect(self.viewer.dims.events.order, self._on_dims_changed)
        self._connect(self.viewer.dims.events.ndisplay, self._on_dims_changed)
        self._refresh_layer_choices()
        self._bind_keys()
        active = self.viewer.layers.selection.active
        if isinstance(active, _layer_types()[0]):
            self._set_image_layer(active)
        elif self._image_layer is None:
            images = [
                layer for layer in self.viewer.layers if isinstance(layer, _layer_types()[0])
            ]
            if images:
                self._set_image_layer(images[-1])
        QTimer.singleShot(0, self._load_default_model)
        cleanup_at_exit(self)  # stop workers before Python tears Qt down
        # A viewer closed with its window deletes this widget without closeEvent.
        alive = weakref.ref(self)
        self.destroyed.connect(lambda *_: (widget := alive()) is not None and widget.cleanup())

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_combo)
        form.addRow("Image", self.image_combo)

        self.channels_row = QWidget()  # shown only for layers that may have channels
        channels = QHBoxLayout(self.channels_row)
        channels.setContentsMargins(0, 0, 0, 0)
        self.channel_axis_spin = QSpinBox()
        self.channel_axis_spin.setRange(-1, 31)
        self.channel_axis_spin.setValue(-1)
        self.channel_axis_spin.setSpecialValueText("none")
        self.channel_axis_spin.setToolTip("A data axis of channels (not RGB); none = no such axis")
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("e.g. 0 or 0,1,2")
        self.channels_edit.setToolTip("1 channel (gray) or 3 channels (RGB) form the view")
        self.channel_axis_spin.valueChanged.connect(self._on_view_options)
        self.channels_edit.editingFinished.connect(self._on_view_options)
        channels.addWidget(QLabel("axis"))
        channels.addWidget(self.channel_axis_spin)
        channels.addWidget(QLabel("use"))
        channels.addWidget(self.channels_edit)
        form.addRow("Channels", self.channels_row)
        self._form = form
        self._show_channels_row(None)

        self.model_combo = QComboBox()
        self._fill_model_choices()
        self.device_combo = QComboBox()
        self._fill_devices()
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self._on_load_clicked)
        model_row.addWidget(self.load_button)
        form.addRow("Model", model_row)
        form.addRow("Device", self.device_combo)

        self.points_combo = QComboBox()
        self.boxes_combo = QComboBox()
        self.output_combo = QComboBox()
        self.points_combo.currentIndexChanged.connect(self._on_prompt_combo)
        self.boxes_combo.currentIndexChanged.connect(self._on_prompt_combo)
        self.output_combo.currentIndexChanged.connect(self._on_output_combo)
        form.addRow("Points", self.points_combo)
        form.addRow("Boxes", self.boxes_combo)
        form.addRow("Output", self.output_combo)
        layout.addLayout(form)

        actions = QHBoxLayout()
        self.compute_button = QPushButton("Compute embedding")
        self.compute_button.setToolTip(
            "Run the image encoder on the 2D view on screen now (else on the first click)"
        )
        self.compute_button.clicked.connect(lambda: self.compute_embedding(wait=False))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        actions.addWidget(self.compute_button)
        actions.addWidget(self.cancel_button)
        layout.addLayout(actions)

        options = QHBoxLayout()
        self.negative_check = QCheckBox("negative points")
        self.negative_check.toggled.connect(self._set_negative)
        self.per_box_check = QCheckBox("one object per box")
        self.per_box_check.toggled.connect(lambda _: self._schedule_update())
        self.overwrite_check = QCheckBox("overwrite")
        self.overwrite_check.setToolTip("Commit over existing labels too (else only where 0)")
        options.addWidget(self.negative_check)
        options.addWidget(self.per_box_check)
        options.addWidget(self.overwrite_check)
        layout.addLayout(options)

        picker = QGroupBox("Candidates")
        picker_layout = QHBoxLayout(picker)
        self.candidate_group = QButtonGroup(self)
        self.candidate_group.setExclusive(True)
        self.candidate_buttons = []
        for i, name in enumerate(("whole", "part", "subpart")):
            button = QPushButton(name)
            button.setCheckable(True)
            button.setEnabled(False)
            self.candidate_group.addButton(button, i)
            picker_layout.addWidget(button)
            self.candidate_buttons.append(button)
        self.candidate_group.idClicked.connect(self._select_index)
        layout.addWidget(picker)

        commit_row = QHBoxLayout()
        self.commit_button = QPushButton("Commit [K]")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button = QPushButton("Clear [Q]")
        self.clear_button.clicked.connect(self.clear)
        commit_row.addWidget(self.commit_button)
        commit_row.addWidget(self.clear_button)
        layout.addLayout(commit_row)

        from .everything_panel import SegmentEverythingPanel

        self.everything = SegmentEverythingPanel(self)
        layout.addWidget(self.everything)

        self.status_label = QLabel("Load a model, then click on an object.")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        keys = "<br>".join(f"<b>{key}</b>: {text}" for key, (_, text) in KEYS.items())
        keys += f"<br><b>{NEGATIVE_MODIFIER}-click</b>: negative point"
        self.keys_label = QLabel(f"<small>{keys}</small>")
        self.keys_label.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.keys_label)
        layout.addStretch(1)

    def _fill_model_choices(self) -> None:
        from ..zoo import default_model

        self.model_combo.clear()
        for label, data in model_choices(marked=True):
            self.model_combo.addItem(label, data)
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(default_model())))

    def refresh_model_choices(self, select: str | None = None) -> None:
        """Re-read the model choices (e.g. after fine-tuning); `select` picks one by name
        or path, else the current choice stays."""
        current = self.model_combo.currentData() if select is None else select
        self._fill_model_choices()
        index = self.model_combo.findData(current)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)

    def _fill_devices(self) -> None:
        self.device_combo.clear()
        self.device_combo.addItems(device_choices())

    def _set_status(self, text: str) -> None:
        if not self._closed:
            self.status_label.setText(text)

    # ------------------------------------------------------------------ signals
    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connected.append((emitter, callback))

    def _disconnect_all(self) -> None:
        for emitter, callback in self._connected:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(callback)
        self._connected.clear()

    def _bind_keys(self) -> None:
        from napari.utils.key_bindings import coerce_keybinding

        for key, (method, _) in KEYS.items():
            if coerce_keybinding(key) in self.viewer.keymap:
                _notify(
                    f"Segment Anything: key {key} is taken; use the buttons instead.", "warning"
                )
                continue
            self.viewer.bind_key(key, self._key_handler(method))
            self._bound_keys.append(key)

    def _key_handler(self, method: str):
        def handler(_viewer):
            getattr(self, method)()

        handler.__name__ = f"sam_{method}"
        return handler

    def _unbind_keys(self) -> None:
        for key in self._bound_keys:
            self.viewer.bind_key(key, None)
        self._bound_keys.clear()

    def cleanup(self) -> None:
        """Unbind keys, disconnect every callback, stop workers. Called when the widget
        closes or leaves its dock; the layers it made stay."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self._unbind_keys()
        self._disconnect_all()
        for layer in (self._points_layer, self._boxes_layer):
            self._detach_prompt_layer(layer)

    def closeEvent(self, event) -> None:
        self.cleanup()
        super().closeEvent(event)

    def event(self, event) -> bool:
        # napari's remove_dock_widget takes the widget out of its dock with setParent(None).
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cleanup()
        return super().event(event)

    # ------------------------------------------------------------------ layers
    def _layers_of(self, kind) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layer_choices(self) -> None:
        Image, Labels, Points, Shapes = _layer_types()
        combos = (
            (self.image_combo, self._layers_of(Image), self._image_layer, None),
            (self.points_combo, self._layers_of(Points), self._points_layer, None),
            (self.boxes_combo, self._layers_of(Shapes), self._boxes_layer, None),
            (
                self.output_combo,
                [la for la in self._layers_of(Labels) if not _same(la, self._preview_layer)],
                self._output_layer,
                NEW_LAYER,
            ),
        )
        for combo, layers, current, first in combos:
            # Qt hands back copies of Python objects stored as item data: keep our own list.
            entries = ([None] if first is not None else []) + layers
            self._combo_layers[id(combo)] = entries
            combo.blockSignals(True)
            combo.clear()
            for entry in entries:
                combo.addItem(first if entry is None else entry.name)
            index = next((i for i, entry in enumerate(entries) if _same(entry, current)), -1)
            combo.setCurrentIndex(max(index, 0) if first is not None else index)
            combo.blockSignals(False)

    def _combo_layer(self, combo: QComboBox, index: int | None = None):
        entries = self._combo_layers.get(id(combo), [])
        index = combo.currentIndex() if index is None else index
        return entries[index] if 0 <= index < len(entries) else None

    def _on_layers_changed(self, event=None) -> None:
        self._refresh_layer_choices()
        if self._image_layer is None:
            Image = _layer_types()[0]
            layer = getattr(event, "value", None)
            if isinstance(layer, Image):
                self._set_image_layer(layer)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if _same(layer, self._image_layer):
            self._image_layer = None
            self._cancel_encoding()
            self._reset_prediction()
            images = self._layers_of(_layer_types()[0])
            if images:
                self._set_image_layer(images[-1])
        if _same(layer, self._points_layer):
            self._detach_prompt_layer(layer)
            self._points_layer = None
            self._reset_prediction()
            QTimer.singleShot(0, self._ensure_prompt_layers)
        if _same(layer, self._boxes_layer):
            self._detach_prompt_layer(layer)
            self._boxes_layer = None
            self._reset_prediction()
            QTimer.singleShot(0, self._ensure_prompt_layers)
        if _same(layer, self._preview_layer):
            self._preview_layer = None
            self._preview_view = None
        if _same(layer, self._output_layer):
            self._output_layer = None
        self._refresh_layer_choices()

    def _on_active_layer(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if isinstance(layer, _layer_types()[0]) and not _same(layer, self._image_layer):
            self._set_image_layer(layer)

    def _on_image_combo(self, index: int) -> None:
        layer = self._combo_layer(self.image_combo, index)
        if layer is not None and not _same(layer, self._image_layer):
            self._set_image_layer(layer)

    def _on_prompt_combo(self, _index: int = 0) -> None:
        points = self._combo_layer(self.points_combo)
        boxes = self._combo_layer(self.boxes_combo)
        if points is not None and not _same(points, self._points_layer):
            self._attach_points(points)
        if boxes is not None and not _same(boxes, self._boxes_layer):
            self._attach_boxes(boxes)
        self._schedule_update()

    def _on_output_combo(self, _index: int) -> None:
        self._output_layer = self._combo_layer(self.output_combo)

    def _set_image_layer(self, layer) -> None:
        self._image_layer = layer
        self._show_channels_row(layer)
        self._forget_pixels()
        self._reset_prediction()
        preview = self._preview_layer
        if (
            preview is not None
            and preview in self.viewer.layers
            and preview.data.shape != self._spatial_shape(layer)
        ):
            self.viewer.layers.remove(preview)
        self._refresh_layer_choices()
        if (layer.events.data, self._on_image_data) not in self._connected:
            self._connect(layer.events.data, self._on_image_data)
            # refresh() after an edit in place (and every re-slicing) emits set_data.
            self._connect(layer.events.set_data, self._on_image_data)
        self._ensure_prompt_layers()
        self._schedule_update()

    def _on_image_data(self, event=None) -> None:
        self._forget_pixels()
        self._schedule_update()

    def _spatial_shape(self, layer) -> tuple[int, ...]:
        data = layer.data[0] if layer.multiscale else layer.data
        shape = tuple(data.shape)
        return shape[:-1] if layer.rgb else shape

    def _ensure_prompt_layers(self) -> None:
        """Create the prompt layers when missing (or made for an image of other ndim)."""
        if self._closed or self._image_layer is None:
            return
        image = self._image_layer
        active = self.viewer.layers.selection.active
        # Our own prompt layers follow the image's dimensionality; a user's are kept.
        for attr in ("_points_layer", "_boxes_layer"):
            layer = getattr(self, attr)
            if (
                layer is not None
                and layer.unique_id in self._owned
                and layer in self.viewer.layers
                and layer.ndim != image.ndim
                and len(layer.data) == 0
            ):
                self.viewer.layers.remove(layer)  # _on_layer_removed resets the attribute
        created = False
        if self._points_layer is None or self._points_layer not in self.viewer.layers:
            self._attach_points(self._make_points_layer(image))
            created = True
        if self._boxes_layer is None or self._boxes_layer not in self.viewer.layers:
            self._attach_boxes(self._make_boxes_layer(image))
        if created:
            self.viewer.layers.selection.active = self._points_layer
            self._points_layer.mode = "add"
        elif active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        # Made with the prompt layers (about 0.2 s of the GUI thread): not on the first
        # click, which should show its mask at once, nor while an embedding is computed.
        self._preview()
        self._refresh_layer_choices()

    def _point_size(self, image) -> float:
        shape = self._spatial_shape(image)
        return float(max(3.0, max(shape[-2:]) / 60))

    def _make_points_layer(self, image):
        import pandas as pd
        from napari.layers import Points

        polarity = pd.Series([], dtype=pd.CategoricalDtype(["positive", "negative"]))
        layer = Points(
            np.zeros((0, image.ndim)),
            ndim=image.ndim,
            name=POINTS_NAME,
            features=pd.DataFrame({POLARITY: polarity}),
            face_color=POLARITY,
            face_color_cycle={"positive": POSITIVE_COLOUR, "negative": NEGATIVE_COLOUR},
            border_color="black",
            size=self._point_size(image),
            **_transform_kwargs(image),
        )
        self._owned.add(layer.unique_id)
        self.viewer.add_layer(layer)
        return layer

    def _make_boxes_layer(self, image):
        from napari.layers import Shapes

        layer = Shapes(
            ndim=image.ndim,
            name=BOXES_NAME,
            edge_color="yellow",
            face_color="transparent",
            edge_width=max(1.0, self._point_size(image) / 4),
            **_transform_kwargs(image),
        )
        self._owned.add(layer.unique_id)
        self.viewer.add_layer(layer)
        return layer

    def _attach_points(self, layer) -> None:
        if _same(layer, self._points_layer):
            return
        self._detach_prompt_layer(self._points_layer)
        self._points_layer = layer
        self._connect(layer.events.data, self._on_prompts_changed)
        if hasattr(layer.events, "feature_defaults"):
            self._connect(layer.events.feature_defaults, self._on_feature_defaults)
        if self._on_points_press not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._on_points_press)
        self._apply_polarity_default()
        self._reset_prediction()

    def _attach_boxes(self, layer) -> None:
        if _same(layer, self._boxes_layer):
            return
        self._detach_prompt_layer(self._boxes_layer)
        self._boxes_layer = layer
        self._connect(layer.events.data, self._on_prompts_changed)
        self._reset_prediction()

    def _detach_prompt_layer(self, layer) -> None:
        if layer is None:
            return
        ours = [
            (layer.events.data, self._on_prompts_changed),
            (getattr(layer.events, "feature_defaults", None), self._on_feature_defaults),
        ]
        for emitter, callback in list(self._connected):
            if any(emitter == e and callback == c for e, c in ours):
                emitter.disconnect(callback)
                self._connected.remove((emitter, callback))
        if self._on_points_press in getattr(layer, "mouse_drag_callbacks", []):
            layer.mouse_drag_callbacks.remove(self._on_points_press)

    # ------------------------------------------------------------------ polarity
    def _on_points_press(self, layer, event):
        """Ctrl-click adds a negative point: set the polarity the next point gets."""
        # Set on every press: napari copies the last selected point's features into
        # feature_defaults after an add, so a value set earlier does not last.
        negative = self._negative or NEGATIVE_MODIFIER in set(event.modifiers)
        self._pressing = True
        self._apply_polarity_default(negative)
        yield
        while event.type == "mouse_move":
            yield
        # napari adds the point while handling this release: restore the toggle after it.
        QTimer.singleShot(0, self._end_press)

    def _end_press(self) -> None:
        self._pressing = False
        self._apply_polarity_default()

    def _on_feature_defaults(self, event=None) -> None:
        """Keep new points' polarity the widget's, whatever napari copied from a selected
        point into feature_defaults (it does so after every add)."""
        layer = self._points_layer
        if self._pressing or layer is None or POLARITY not in layer.feature_defaults:
            return
        if (str(layer.feature_defaults[POLARITY].iloc[0]) == "negative") != self._negative:
            self._apply_polarity_default()

    def _apply_polarity_default(self, negative: bool | None = None) -> None:
        layer = self._points_layer
        if layer is None or POLARITY not in layer.features:
            return
        negative = self._negative if negative is None else negative
        layer.feature_defaults = {POLARITY: "negative" if negative else "positive"}

    def _set_negative(self, negative: bool) -> None:
        self._negative = bool(negative)
        self._apply_polarity_default()
        if self.negative_check.isChecked() != self._negative:
            self.negative_check.setChecked(self._negative)

    def toggle_polarity(self) -> None:
        """Switch new points between positive and negative (key N)."""
        self._set_negative(not self._negative)
        self._set_status(f"New points are {'negative' if self._negative else 'positive'}.")

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        return self._model

    def set_model(self, model, device: str | None = None, dtype: str = "auto", wait: bool = True):
        """Use a model: a zoo name, a checkpoint path, or a ready `Sam` instance.

        Names and paths load in a worker thread (downloading when needed, with progress in
        the activity dock); `wait=True` returns once it is loaded.
        """
        self._model_requested = True
        if device is None:
            device = self.device_combo.currentText() or "auto"
        from ..model import Sam

        if isinstance(model, Sam):
            self._supersede_load()
            self._use_model(model, getattr(model, "name", None) or type(model).__name__)
            return model
        generation = self._start_load(str(model), device, dtype)
        if wait:
            self._wait_for(lambda: self._load_worker is None)
            error, self._load_error = self._load_error, None
            if error is not None and generation == self._load_generation:
                # The worker's frames and chained causes add nothing for a script.
                raise error.with_traceback(None) from None
        return self._model

    def _use_model(self, model, name: str) -> None:
        from ..predictor import SamPredictor

        self._cancel_encoding()
        self._model = model.eval()
        self._model_id += 1
        self._model_name = name
        self._predictor = SamPredictor(self._model)
        self._current_embedding = None
        self._reset_prediction()
        self._set_status(f"Model {name} ready on {model.device}. Click on an object.")
        self._schedule_update()

    def _load_default_model(self) -> None:
        """Opened from the Plugins menu: load the model the combo shows, so that the first
        click works without pressing Load."""
        if self._closed or self._model_requested:
            return
        choice = self.model_combo.currentData()
        if choice and choice != LOCAL_FILE:
            self.set_model(choice, wait=False)

    def _on_load_clicked(self) -> None:
        choice = self.model_combo.currentData()
        if choice == LOCAL_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self,
                "SAM checkpoint",
                "",
                "Checkpoints (*.pth *.pt *.ckpt *.safetensors);;All (*)",
            )
            if not path:
                return
            choice = path
        self.set_model(choice, wait=False)

    def _supersede_load(self) -> None:
        """A newer model choice wins: the load in flight stops at its next download
        chunk, and whatever it returns is ignored."""
        self._load_generation += 1
        self._load_cancelled = True
        if self._load_progress is not None:
            self._load_progress.close()
            self._load_progress = None
        self._load_worker = None
        self._update_busy()

    def _start_load(self, name: str, device: str, dtype: str) -> int:
        from napari.utils import cancelable_progress

        self._supersede_load()
        generation = self._load_generation
        self._load_cancelled = False
        self._load_error = None
        pbar = cancelable_progress(
            total=0, desc=f"SAM: loading {name}", cancel_callback=self.cancel
        )
        self._load_progress = pbar
        relay = self._relay

        def progress(done: int, total: int) -> None:
            if generation != self._load_generation or self._load_cancelled or pbar.is_canceled:
                raise _LoadCancelled()
            relay.download.emit(int(done), int(total or 0))

        def load():
            from ..zoo import load_model

            return load_model(name, device=device, dtype=dtype, progress=progress)

        def current() -> bool:
            return generation == self._load_generation and not self._closed

        self._load_worker = start_worker(
            load,
            returned=lambda model: current() and self._use_model(model, name),
            errored=lambda error: current() and self._on_load_error(error),
            finished=lambda: self._on_load_finished(pbar),
        )
        self._update_busy()
        self._set_status(f"Loading {name}...")
        return generation

    def _on_download_progress(self, done: int, total: int) -> None:
        pbar = self._load_progress
        if pbar is None:
            return
        if total and pbar.total != total:
            pbar.total = total
        pbar.update(done - pbar.n)

    def _on_load_error(self, error: Exception) -> None:
        if isinstance(error, _LoadCancelled):
            self._set_status("Model loading cancelled.")
            return
        self._load_error = error  # set_model(wait=True) raises it
        self._set_status(f"Could not load the model: {error}")
        _notify(f"Segment Anything: could not load the model: {error}", "error")

    def _on_load_finished(self, pbar) -> None:
        pbar.close()
        if self._load_progress is pbar:
            self._load_worker = None
            self._load_progress = None
        self._update_busy()

    # ------------------------------------------------------------------ view + embedding
    def _view_spec(self, layer) -> ViewSpec:
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            raise _UserError("Segment Anything works in the 2D view; switch the viewer to 2D.")
        offset = dims.ndim - layer.ndim
        displayed = [axis - offset for axis in dims.displayed if axis - offset >= 0]
        if len(displayed) != 2:
            raise _UserError("The image layer must have two displayed axes.")
        position = layer.world_to_data(dims.point)
        shape = self._spatial_shape(layer)
        # The channel axis gets its slider position too: extract_view ignores it when
        # channels are picked, and commits land at that position of the labels.
        index = {}
        for axis in range(layer.ndim):
            if axis in displayed:
                continue
            index[axis] = int(np.clip(np.round(position[axis]), 0, shape[axis] - 1))
        return ViewSpec(displayed, index)

    def _show_channels_row(self, layer) -> None:
        """Channels exist only in gray nD data (an axis may hold them), not in 2D or RGB."""
        shown = layer is not None and not layer.rgb and layer.ndim >= 3
        self.channels_row.setVisible(shown)
        label = self._form.labelForField(self.channels_row)
        if label is not None:
            label.setVisible(shown)

    def _channel_axis(self, layer) -> int | None:
        """The channel axis, when the user picked one and channels on it."""
        axis = self.channel_axis_spin.value()
        if self.channels_row.isHidden():
            return None
        if axis < 0 or layer.rgb or not self.channels_edit.text().strip():
            return None
        if axis >= layer.ndim:
            raise _UserError(f"Channel axis {axis} does not exist in a {layer.ndim}D layer.")
        return axis

    def _channels(self) -> list[int] | None:
        text = self.channels_edit.text().strip()
        if not text:
            return None
        try:
            return [int(part) for part in text.replace(" ", ",").split(",") if part]
        except ValueError:
            raise _UserError(f"Channels must be numbers such as 0,1,2; got {text!r}.") from None

    def _on_view_options(self, *_args) -> None:
        self._forget_pixels()
        self._reset_prediction()
        self._schedule_update()

    def view_reader(self, layer):
        """A function `read(view) -> (image, where)` for `layer` with the channel choice
        made now: the 2D view's pixels and the part of the embedding key that says where
        they came from. It reads no widget state, so a worker thread may call it."""
        data = layer.data[0] if layer.multiscale else layer.data
        rgb = layer.rgb
        channel_axis = self._channel_axis(layer)
        channels = self._channels() if channel_axis is not None else None
        extra = (channel_axis, tuple(channels or ()))

        def read(view: ViewSpec) -> tuple[np.ndarray, tuple]:
            try:
                image = extract_view(
                    data, view.displayed, view.slice_index, rgb=rgb,
                    channel_axis=channel_axis, channels=channels,
                )  # fmt: skip
            except (ValueError, IndexError) as error:
                raise _UserError(str(error)) from None
            # The view does not depend on the channel slider when channels are picked.
            sliced = {a: i for a, i in view.slice_index.items() if a != channel_axis}
            return image, ((view.displayed, tuple(sliced.items())), extra)

        return read

    def _embedding_key(self, layer, view: ViewSpec) -> tuple[tuple | None, np.ndarray | None]:
        """(key, image): the cache key of the view's embedding and the view's pixels.

        In-memory data is read and hashed here on every call (about a millisecond), so an
        edit in place (`layer.data[:] = ...`) is never decoded on the old embedding. Lazy
        data (dask, zarr) is never read in the GUI thread: the key is the one the worker
        found for this view since napari last reported a change (set_data, data), else
        None, and (None, None) asks for a worker to read, hash and embed it."""
        data = layer.data[0] if layer.multiscale else layer.data
        if isinstance(data, np.ndarray):
            image, where = self.view_reader(layer)(view)
            return (fingerprint(image), where, self._model_id), image
        found = self._fingerprints.get(self._lazy_view_id(layer, view))
        return (None if found is None else (*found, self._model_id)), None

    def _forget_pixels(self) -> None:
        """The pixels of lazy data may have changed: read and hash them again."""
        self._fingerprints.clear()
        self._pixels_generation += 1

    def _lazy_view_id(self, layer, view: ViewSpec) -> tuple:
        channels = (self._channel_axis(layer), tuple(self._channels() or ()))
        return (layer.unique_id, view.key(), channels)

    def embedding_for(self, key):
        """The embedding stored under `key`: the current view's, or one in the cache."""
        current = self._current_embedding
        if current is not None and current[0] == key:
            return current[1]
        return self.cache.get(key)

    def store_embedding(self, key, embedding) -> None:
        """Keep `embedding` as the current view's (whatever the cache's budget) and in
        the cache."""
        self._current_embedding = (key, embedding)
        self.cache.put(key, embedding)

    def compute_embedding(self, wait: bool = True) -> bool:
        """Embed the 2D view on screen (in a worker). `wait=True` returns when done.
        Returns True when the embedding is ready."""
        try:
            if self._require_ready() is None:
                return False
            layer = self._image_layer
            view = self._view_spec(layer)
            key, image = self._embedding_key(layer, view)
            if key is not None and self.embedding_for(key) is not None:
                return True
            self._start_encoding(layer, view, key, image)
            if wait:
                self._wait_for(lambda: self._encode_worker is None)
            key, _ = self._embedding_key(layer, view)
        except _UserError as error:
            self._user_error(error)
            return False
        return key is not None and self.embedding_for(key) is not None

    def _start_encoding(self, layer, view: ViewSpec, key, image) -> None:
        """Embed the view in a worker. Without `image` (lazy data) the worker reads the
        plane and hashes it first, and finds it in the cache when it was embedded."""
        from napari.utils import cancelable_progress

        job = key if key is not None else ("lazy", self._lazy_view_id(layer, view))
        if self._encode_key == job and self._encode_worker is not None:
            return
        self._cancel_encoding()
        depth = len(getattr(self._model.image_encoder, "blocks", ())) or 1
        pbar = cancelable_progress(
            total=depth, desc="SAM: embedding image", cancel_callback=self.cancel
        )
        model, model_id, relay = self._model, self._model_id, self._relay
        read = None if image is not None else self.view_reader(layer)
        lazy_id = None
        if image is None:  # remembered only if napari reports no change meanwhile
            lazy_id = (self._lazy_view_id(layer, view), self._pixels_generation)

        def on_block(done: int, _total: int) -> None:
            # Runs in the worker, between encoder blocks: progress, and the place to stop.
            if pbar.is_canceled:
                raise _EncodingCancelled()
            relay.encoded_blocks.emit(done)

        def work():
            from ..predictor import embed_image

            pixels, found_key = image, key
            if pixels is None:
                pixels, where = read(view)
                found_key = (fingerprint(pixels), where, model_id)
            embedding = self.embedding_for(found_key)
            if embedding is None:
                try:
                    embedding = embed_image(model, pixels, on_block)
                except _EncodingCancelled:
                    return None
            return found_key, embedding, lazy_id

        self._encode_key, self._encode_progress = job, pbar
        self._encode_started = time.perf_counter()
        self._encode_worker = start_worker(
            work,
            returned=self._on_encoded,
            errored=self._on_encode_error,
            finished=lambda: self._on_encode_finished(pbar),
        )
        self._update_busy()
        self._set_status("Computing the image embedding...")

    def _on_encoded_blocks(self, done: int) -> None:
        if self._encode_progress is not None:
            self._encode_progress.update(done - self._encode_progress.n)

    def _on_encoded(self, result) -> None:
        if result is None:  # cancelled
            if self._image_layer is None:
                self._set_status("Open or choose an image layer.")
            else:
                self._set_status("Embedding cancelled.")
            return
        key, embedding, lazy_id = result
        if key[-1] != self._model_id:
            return  # the model changed meanwhile
        if lazy_id is not None and lazy_id[1] == self._pixels_generation:
            self._fingerprints[lazy_id[0]] = key[:-1]
        self.store_embedding(key, embedding)
        seconds = time.perf_counter() - self._encode_started
        self._set_status(f"Embedding ready ({seconds:.1f} s).")
        self._schedule_update()

    def _on_encode_error(self, error: Exception) -> None:
        self._set_status(f"Embedding failed: {error}")
        _notify(f"Segment Anything: embedding failed: {error}", "error")

    def _on_encode_finished(self, pbar) -> None:
        pbar.close()
        if self._encode_progress is pbar:
            self._encode_worker = None
            self._encode_key = None
            self._encode_progress = None
        self._update_busy()

    def _cancel_encoding(self) -> None:
        # The worker sees the flag between encoder blocks and returns None.
        if self._encode_progress is not None:
            self._encode_progress.cancel()
        self._encode_key = None

    def segment_everything(self, wait: bool = True):
        """Automatic masks for the view on screen (or every slice, with the panel's
        option) into a new Labels layer, which later commits also go to. Returns that
        layer when `wait`."""
        return self.everything.run(wait=wait)

    def cancel(self) -> None:
        """Stop model loading, image encoding (between encoder blocks) and segment
        everything (between batches)."""
        self.everything.cancel()
        self._cancel_encoding()
        if self._load_worker is not None:
            self._load_cancelled = True
            self._load_worker.quit()

    def _update_busy(self) -> None:
        if self._closed:
            return
        busy = self._encode_worker is not None or self._load_worker is not None
        self.cancel_button.setEnabled(busy)

    @property
    def busy(self) -> bool:
        return self._encode_worker is not None or self._load_worker is not None

    def _wait_for(self, condition, timeout: float | None = None) -> None:
        from qtpy.QtWidgets import QApplication

        start = time.perf_counter()
        while not condition():
            QApplication.processEvents()
            time.sleep(0.005)
            if timeout is not None and time.perf_counter() - start > timeout:
                raise TimeoutError("Segment Anything: timed out waiting for a worker.")

    def wait(self, timeout: float | None = None) -> None:
        """Process events until loading and encoding are done (for scripts and tests)."""
        self._wait_for(lambda: not self.busy, timeout)
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()

    # ------------------------------------------------------------------ prompts -> preview
    @property
    def points_layer(self):
        """The Points layer whose points are prompts (created when missing)."""
        if self._points_layer is None or self._points_layer not in self.viewer.layers:
            self._points_layer = None
            self._ensure_prompt_layers()
        return self._points_layer

    @property
    def boxes_layer(self):
        """The Shapes layer whose rectangles are box prompts (created when missing)."""
        if self._boxes_layer is None or self._boxes_layer not in self.viewer.layers:
            self._boxes_layer = None
            self._ensure_prompt_layers()
        return self._boxes_layer

    @points_layer.setter
    def points_layer(self, layer) -> None:
        self._attach_points(layer)
        self._refresh_layer_choices()
        self._schedule_update()

    @boxes_layer.setter
    def boxes_layer(self, layer) -> None:
        self._attach_boxes(layer)
        self._refresh_layer_choices()
        self._schedule_update()

    def _on_prompts_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "")).lower()
        if action.endswith(("adding", "changing", "removing")):
            return
        self.update_prediction()

    def _on_dims_changed(self, event=None) -> None:
        self._schedule_update()

    def _schedule_update(self) -> None:
        # Several events of one user action (slicing emits dims and set_data) decode once.
        if not self._closed and not self._update_pending:
            self._update_pending = True
            QTimer.singleShot(0, self._run_scheduled_update)

    def _run_scheduled_update(self) -> None:
        self._update_pending = False
        self.update_prediction()

    def _require_ready(self):
        if self._closed:
            return None
        if self._image_layer is None or self._image_layer not in self.viewer.layers:
            self._set_status("Open or choose an image layer.")
            return None
        if self._model is None:
            self._set_status("Load a model (Load button), then click on an object.")
            return None
        return self._model

    def _gather_prompts(self, view: ViewSpec):
        image = self._image_layer
        image_matrix = _data_to_world(image)
        point = self.viewer.dims.point
        points = boxes = None
        if self._points_layer is not None and self._points_layer in self.viewer.layers:
            layer = self._points_layer
            polarity = layer.features.get(POLARITY, None)
            points = points_to_view(
                layer.data, _data_to_world(layer), image_matrix, view, image.ndim,
                polarity=None if polarity is None else list(polarity), world_point=point,
            )  # fmt: skip
        if self._boxes_layer is not None and self._boxes_layer in self.viewer.layers:
            layer = self._boxes_layer
            boxes = boxes_to_view(
                layer.data, layer.shape_type, _data_to_world(layer), image_matrix, view,
                image.ndim, world_point=point,
            )  # fmt: skip
        return points, boxes

    def update_prediction(self) -> None:
        """Re-run the decoder on the current prompts and refresh the preview.

        Starts the image encoder first when the view has no embedding yet."""
        if self._updating or self._require_ready() is None:
            return
        self._updating = True
        try:
            self._update_prediction()
        except _UserError as error:
            self._user_error(error)
        finally:
            self._updating = False

    def _update_prediction(self) -> None:
        layer = self._image_layer
        view = self._view_spec(layer)
        points, boxes = self._gather_prompts(view)
        n_points = 0 if points is None else len(points.coords)
        n_boxes = 0 if boxes is None else len(boxes.boxes)
        if n_points == 0 and n_boxes == 0:
            self._reset_prediction()
            self._show_preview()
            return
        key, image = self._embedding_key(layer, view)
        embedding = None if key is None else self.embedding_for(key)
        if embedding is None:
            self._start_encoding(layer, view, key, image)
            return
        predictor = self._predictor
        predictor.image_embedding = embedding
        start = time.perf_counter()
        per_box = self.per_box_check.isChecked() and n_boxes > 0
        if per_box:
            masks, scores = predictor.predict_boxes(boxes.boxes)
            self._objects = [
                Candidate(f"box {i + 1}", mask, float(score), np.zeros(0))
                for i, (mask, score) in enumerate(zip(masks, scores, strict=True))
            ]
            self._candidates, self._selected = [], -1
            self._last_prompts, self._last_logits = None, None
            self._prediction_points = np.zeros(0, np.intp)
            self._prediction_boxes = boxes.indices
            self._set_status(f"{len(masks)} objects, one per box: commit to keep them all.")
        else:
            box = boxes.boxes[-1] if n_boxes else None
            prompts = PromptSet.from_arrays(
                points.coords if n_points else np.zeros((0, 2)),
                points.labels if n_points else np.zeros(0),
                box,
            )
            mask_input = None
            if self._last_logits is not None and prompts_grew(self._last_prompts, prompts):
                mask_input = self._last_logits
            masks, scores, logits = predictor.predict(
                points=points.coords if n_points else None,
                labels=points.labels if n_points else None,
                box=box,
                mask_input=mask_input,
            )
            self._objects = []
            self._candidates = rank_candidates(masks, scores, logits)
            self._selected = best_index(self._candidates)
            self._last_prompts = prompts
            self._last_logits = self._candidates[self._selected].logits
            self._prediction_points = points.indices if n_points else np.zeros(0, np.intp)
            self._prediction_boxes = boxes.indices[-1:] if n_boxes else np.zeros(0, np.intp)
            if n_boxes > 1:
                self._set_status(
                    "Several boxes: the last one is used (tick 'one object per box' for all)."
                )
            else:
                self._set_status(self._candidate_text())
        self._prediction_view = view
        self._prediction_point = tuple(self.viewer.dims.point)
        self.last_decode_seconds = time.perf_counter() - start
        self._show_preview()

    def _candidate_text(self) -> str:
        if not self._candidates:
            return ""
        chosen = self._candidates[self._selected]
        return f"{chosen.name}: predicted IoU {chosen.iou:.2f}, {chosen.area} px."

    def _reset_prediction(self) -> None:
        self._candidates, self._selected, self._objects = [], -1, []
        self._last_prompts, self._last_logits = None, None
        self._prediction_view = None
        self._prediction_points = np.zeros(0, np.intp)
        self._prediction_boxes = np.zeros(0, np.intp)
        if not self._closed:
            self._update_candidate_buttons()

    def _update_candidate_buttons(self) -> None:
        names = [c.name for c in self._candidates]
        three = names == ["whole", "part", "subpart"]
        for i, button in enumerate(self.candidate_buttons):
            if three:
                button.setEnabled(True)
                button.setText(f"{names[i]} {self._candidates[i].iou:.2f}")
                button.setChecked(i == self._selected)
            else:
                button.setEnabled(False)
                button.setText(("whole", "part", "subpart")[i])
        if not three:
            checked = self.candidate_group.checkedButton()
            if checked is not None:
                self.candidate_group.setExclusive(False)
                checked.setChecked(False)
                self.candidate_group.setExclusive(True)

    # ------------------------------------------------------------------ preview
    def _preview(self):
        image = self._image_layer
        shape = self._spatial_shape(image)
        layer = self._preview_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != shape:
            from napari.layers import Labels

            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            active = self.viewer.layers.selection.active
            layer = Labels(
                np.zeros(shape, np.uint8),
                name=PREVIEW_NAME,
                opacity=1.0,
                blending="translucent",
                **_transform_kwargs(image),
            )
            _style_preview(layer)
            index = self.viewer.layers.index(image) + 1
            self.viewer.layers.insert(index, layer)
            self._preview_layer = layer
            self._preview_view = None
            if active is not None and active in self.viewer.layers:
                self.viewer.layers.selection.active = active
            self._refresh_layer_choices()
        return layer

    def _show_preview(self) -> None:
        if self._closed:
            return
        self._update_candidate_buttons()
        if self._image_layer is None:
            return
        masks = [c.mask for c in self._objects]
        if self._candidates:
            masks = [self._candidates[self._selected].mask]
        if not masks and (self._preview_layer is None or self._preview_view is None):
            return
        layer = self._preview()
        if self._preview_view is not None:
            key = self._plane_key(self._preview_view, layer.ndim)
            layer.data[key] = 0
            self._preview_view = None
        if masks:
            view = self._prediction_view
            plane = np.zeros(masks[0].shape, np.uint8)
            for i, mask in enumerate(masks):
                plane[mask & (plane == 0)] = (i % 254) + 1
            key = self._plane_key(view, layer.ndim)
            target = layer.data[key]
            if view.displayed[0] > view.displayed[1]:
                plane = plane.T
            target[...] = plane
            self._preview_view = view
        layer.refresh()

    @staticmethod
    def _plane_key(view: ViewSpec, ndim: int) -> tuple:
        key: list = [slice(None)] * ndim
        for axis, index in view.slice_index.items():
            key[axis] = index
        return tuple(key)

    # ------------------------------------------------------------------ picking
    @property
    def candidates(self) -> list[Candidate]:
        """The current candidates (name, mask, predicted IoU), largest first; in
        "one object per box" mode, one per box."""
        return list(self._candidates or self._objects)

    @property
    def selected(self) -> Candidate | None:
        return self._candidates[self._selected] if self._candidates else None

    def select(self, which: str | int) -> Candidate:
        """Choose a candidate: "whole", "part", "subpart" or an index."""
        if not self._candidates:
            raise _UserError("There are no candidates: add a prompt first.")
        if isinstance(which, str):
            names = [c.name for c in self._candidates]
            if which not in names:
                raise _UserError(f"No candidate {which!r}; there are {names}.")
            index = names.index(which)
        else:
            index = int(which)
        self._select_index(index)
        return self._candidates[self._selected]

    def _select_index(self, index: int) -> None:
        if not self._candidates or not 0 <= index < len(self._candidates):
            return
        self._selected = index
        self._last_logits = self._candidates[index].logits
        self._set_status(self._candidate_text())
        self._show_preview()

    def _select_by_key(self, name: str) -> None:
        if any(c.name == name for c in self._candidates):
            self.select(name)

    def select_whole(self) -> None:
        self._select_by_key("whole")

    def select_part(self) -> None:
        self._select_by_key("part")

    def select_subpart(self) -> None:
        self._select_by_key("subpart")

    def next_candidate(self) -> None:
        if self._candidates:
            self._select_index((self._selected + 1) % len(self._candidates))

    # ------------------------------------------------------------------ commit / clear
    @property
    def output_layer(self):
        """The Labels layer commits go to (None until the first commit creates one)."""
        if self._output_layer is not None and self._output_layer not in self.viewer.layers:
            self._output_layer = None
        return self._output_layer

    @output_layer.setter
    def output_layer(self, layer) -> None:
        self._output_layer = layer
        self._refresh_layer_choices()

    def _ensure_output(self):
        layer = self.output_layer
        if layer is not None:
            return layer
        from napari.layers import Labels

        image = self._image_layer
        active = self.viewer.layers.selection.active
        layer = Labels(
            np.zeros(self._spatial_shape(image), np.int32),
            name=f"{image.name} labels",
            **_transform_kwargs(image),
        )
        self.viewer.add_layer(layer)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self._output_layer = layer
        self._refresh_layer_choices()
        return layer

    def commit(self) -> list[int]:
        """Write the chosen mask (or, one object per box, every box's mask) into the output
        layer with new label ids, as one undoable step; then drop the prompts used.

        The mask lands under the object in world space: it is resampled (nearest
        neighbour) into the output layer's frame when that differs from the image's.
        Nothing is written when the commit cannot be done whole (an output layer that
        cannot be edited in place, ids that would not fit its dtype, frames tilted
        against each other); the prompts are then kept. Returns the ids written."""
        try:
            return self._commit()
        except _UserError as error:
            self._user_error(error)
            return []

    def _commit(self) -> list[int]:
        masks = [c.mask for c in self._objects]
        if self._candidates:
            masks = [self._candidates[self._selected].mask]
        if not masks or self._prediction_view is None:
            raise _UserError("Nothing to commit: click on an object first.")
        existing = self.output_layer
        if existing is not None:
            reason = unwritable_reason(existing.data, existing.multiscale)
            if reason is not None:
                raise _UserError(
                    f"The output layer {existing.name!r} {reason}. Choose {NEW_LAYER} as "
                    "Output, or load it into memory first: layer.data = "
                    "np.array(layer.data) (for a pyramid, layer.data[0])."
                )
        layer = self._ensure_output()
        mapping = view_to_labels(
            self._prediction_view, _data_to_world(self._image_layer), _data_to_world(layer),
            layer.ndim, self._prediction_point,
        )  # fmt: skip
        try:
            plan = plan_commit(masks, layer.data, mapping, self.overwrite_check.isChecked())
        except CommitError as error:
            frames = f"image {_describe_frame(self._image_layer)}; output {_describe_frame(layer)}"
            raise _UserError(f"{error} ({frames})") from None
        with layer.block_history():
            for indices, label_id in plan.writes:
                layer.data_setitem(indices, label_id)
        ids = plan.ids
        if plan.outside and not ids:
            _notify("Segment Anything: the mask lies outside the output layer "
                    f"{layer.name!r}; nothing written.", "warning")  # fmt: skip
        elif not ids and not any(mask.any() for mask in masks):
            _notify("Segment Anything: the mask is empty; nothing written.", "warning")
        elif not ids:
            _notify("Segment Anything: the mask lies entirely on existing labels; nothing "
                    "written (tick 'overwrite' to replace them).", "warning")  # fmt: skip
        else:
            layer.selected_label = ids[-1]
        self._drop_used_prompts()
        self._set_status(f"Committed label {', '.join(map(str, ids))}." if ids else "")
        return ids

    def _drop_used_prompts(self) -> None:
        points, boxes = self._prediction_points, self._prediction_boxes
        self._reset_prediction()
        if self._points_layer is not None and len(points):
            keep = np.setdiff1d(np.arange(len(self._points_layer.data)), points)
            self._remove_data(self._points_layer, keep)
        if self._boxes_layer is not None and len(boxes):
            self._boxes_layer.selected_data = set(int(i) for i in boxes)
            self._boxes_layer.remove_selected()
        self._show_preview()

    @staticmethod
    def _remove_data(layer, keep: np.ndarray) -> None:
        remove = set(range(len(layer.data))) - {int(i) for i in keep}
        if remove:
            layer.selected_data = remove
            layer.remove_selected()

    def clear(self) -> None:
        """Drop all prompts and the preview."""
        self._reset_prediction()
        if self._points_layer is not None and len(self._points_layer.data):
            self._remove_data(self._points_layer, np.zeros(0, np.intp))
        if self._boxes_layer is not None and len(self._boxes_layer.data):
            self._boxes_layer.selected_data = set(range(len(self._boxes_layer.data)))
            self._boxes_layer.remove_selected()
        self._reset_prediction()
        self._show_preview()
        self._set_status("Cleared.")

    def _user_error(self, error: Exception) -> None:
        self._set_status(str(error))
        _notify(f"Segment Anything: {error}", "warning")


class _LoadCancelled(Exception):
    pass
