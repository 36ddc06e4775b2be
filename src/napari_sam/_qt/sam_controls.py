"""The controls of the Segment Anything widget, laid out: layer choices, channels, model
and device, actions, options, the whole / part / subpart picker, commit and clear.

Layout only: `build_controls(widget)` makes the controls as attributes of the widget and
connects them to its public methods.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
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

from ._base import UserError
from ._layers import same_layer
from .commit_to_layer import NEW_LAYER
from .keys import keys_help

__all__ = [
    "LayerCombo",
    "build_controls",
    "show_candidate_buttons",
    "show_channels_row",
    "view_options",
]


class LayerCombo(QComboBox):
    """A combo box of napari layers (optionally headed by a `first` text meaning None).
    Qt hands back copies of Python objects stored as item data: the layers are kept here."""

    def __init__(self, first: str | None = None) -> None:
        super().__init__()
        self.first = first
        self._entries: list = []

    def set_layers(self, layers: list, current) -> None:
        """Show `layers`, selecting `current`, without emitting a change."""
        self._entries = ([None] if self.first is not None else []) + list(layers)
        self.blockSignals(True)
        self.clear()
        for entry in self._entries:
            self.addItem(self.first if entry is None else entry.name)
        index = next((i for i, e in enumerate(self._entries) if same_layer(e, current)), -1)
        self.setCurrentIndex(max(index, 0) if self.first is not None else index)
        self.blockSignals(False)

    def layer(self, index: int | None = None):
        """The layer at `index` (default: the current one); None for `first` or nothing."""
        index = self.currentIndex() if index is None else index
        return self._entries[index] if 0 <= index < len(self._entries) else None


def _row(*widgets, stretch_first: bool = False) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, widget in enumerate(widgets):
        row.addWidget(widget, 1 if stretch_first and i == 0 else 0)
    return row


def build_controls(w) -> None:
    """Make the controls of SamWidget `w` and lay them out in it."""
    layout = QVBoxLayout(w)
    form = QFormLayout()
    w.image_combo = LayerCombo()
    w.image_combo.currentIndexChanged.connect(w._on_image_combo)
    form.addRow("Image", w.image_combo)

    w.channels_row = QWidget()  # shown only for layers that may have channels
    channels = QHBoxLayout(w.channels_row)
    channels.setContentsMargins(0, 0, 0, 0)
    w.channel_axis_spin = QSpinBox()
    w.channel_axis_spin.setRange(-1, 31)
    w.channel_axis_spin.setValue(-1)
    w.channel_axis_spin.setSpecialValueText("none")
    w.channel_axis_spin.setToolTip("A data axis of channels (not RGB); none = no such axis")
    w.channels_edit = QLineEdit()
    w.channels_edit.setPlaceholderText("e.g. 0 or 0,1,2")
    w.channels_edit.setToolTip("1 channel (gray) or 3 channels (RGB) form the view")
    w.channel_axis_spin.valueChanged.connect(w._on_view_options)
    w.channels_edit.editingFinished.connect(w._on_view_options)
    for widget in (QLabel("axis"), w.channel_axis_spin, QLabel("use"), w.channels_edit):
        channels.addWidget(widget)
    form.addRow("Channels", w.channels_row)
    w.form = form

    w.model_combo = QComboBox()
    w.device_combo = QComboBox()
    w.load_button = QPushButton("Load")
    w.load_button.clicked.connect(w._on_load_clicked)
    form.addRow("Model", _row(w.model_combo, w.load_button, stretch_first=True))
    form.addRow("Device", w.device_combo)

    w.points_combo = LayerCombo()
    w.boxes_combo = LayerCombo()
    w.output_combo = LayerCombo(NEW_LAYER)
    w.points_combo.currentIndexChanged.connect(w._on_prompt_combo)
    w.boxes_combo.currentIndexChanged.connect(w._on_prompt_combo)
    w.output_combo.currentIndexChanged.connect(w._on_output_combo)
    form.addRow("Points", w.points_combo)
    form.addRow("Boxes", w.boxes_combo)
    form.addRow("Output", w.output_combo)
    layout.addLayout(form)

    w.compute_button = QPushButton("Compute embedding")
    w.compute_button.setToolTip(
        "Run the image encoder on the 2D view on screen now (else on the first click)"
    )
    w.compute_button.clicked.connect(lambda: w.compute_embedding(wait=False))
    w.cancel_button = QPushButton("Cancel")
    w.cancel_button.setEnabled(False)
    w.cancel_button.clicked.connect(w.cancel)
    w.tiled_check = QCheckBox("in tiles")
    w.tiled_check.setChecked(True)
    w.tiled_check.setToolTip(
        "Decode each click in a tile of the model's input size at the image's own "
        "resolution, when the view is more than 1.25x that size (small objects stay "
        "sharp; an object larger than a tile is cut at its edge: untick for those). "
        "Without prompts, Compute embedding then embeds every tile."
    )
    w.tiled_check.toggled.connect(w._on_tiled_check)
    layout.addLayout(_row(w.compute_button, w.cancel_button, w.tiled_check))

    w.negative_check = QCheckBox("negative points")
    w.negative_check.toggled.connect(w._on_negative_check)
    w.per_box_check = QCheckBox("one object per box")
    w.per_box_check.toggled.connect(w._on_per_box_check)
    w.overwrite_check = QCheckBox("overwrite")
    w.overwrite_check.setToolTip("Commit over existing labels too (else only where 0)")
    layout.addLayout(_row(w.negative_check, w.per_box_check, w.overwrite_check))

    picker = QGroupBox("Candidates")
    picker_layout = QHBoxLayout(picker)
    w.candidate_group = QButtonGroup(w)
    w.candidate_group.setExclusive(True)
    w.candidate_buttons = []
    for i, name in enumerate(("whole", "part", "subpart")):
        button = QPushButton(name)
        button.setCheckable(True)
        button.setEnabled(False)
        w.candidate_group.addButton(button, i)
        picker_layout.addWidget(button)
        w.candidate_buttons.append(button)
    w.candidate_group.idClicked.connect(w.select)
    layout.addWidget(picker)

    w.commit_button = QPushButton("Commit [K]")
    w.commit_button.clicked.connect(w.commit)
    w.clear_button = QPushButton("Clear [Q]")
    w.clear_button.clicked.connect(w.clear)
    layout.addLayout(_row(w.commit_button, w.clear_button))

    from .everything_panel import SegmentEverythingPanel
    from .propagation_panel import PropagationPanel

    w.propagation = PropagationPanel(w)
    layout.addWidget(w.propagation)

    w.everything = SegmentEverythingPanel(w)
    layout.addWidget(w.everything)

    w.set_status("Load a model, then click on an object.")
    layout.addWidget(w.status_label)
    w.keys_label = QLabel(keys_help())
    w.keys_label.setTextFormat(Qt.TextFormat.RichText)
    layout.addWidget(w.keys_label)
    layout.addStretch(1)


def show_candidate_buttons(w, names: list[str], ious: list[float], selected: int) -> None:
    """The picker shows the three candidates of one point (name and predicted IoU, the
    selected one checked); otherwise its buttons are off."""
    three = names == ["whole", "part", "subpart"]
    for i, button in enumerate(w.candidate_buttons):
        button.setEnabled(three)
        button.setText(f"{names[i]} {ious[i]:.2f}" if three else ("whole", "part", "subpart")[i])
        if three:
            button.setChecked(i == selected)
    checked = w.candidate_group.checkedButton()
    if not three and checked is not None:
        w.candidate_group.setExclusive(False)
        checked.setChecked(False)
        w.candidate_group.setExclusive(True)


def show_channels_row(w, layer) -> None:
    """Channels exist only in gray nD data (an axis may hold them), not in 2D or RGB."""
    shown = layer is not None and not layer.rgb and layer.ndim >= 3
    w.channels_row.setVisible(shown)
    label = w.form.labelForField(w.channels_row)
    if label is not None:
        label.setVisible(shown)


def view_options(w, layer) -> dict:
    """rgb, channel_axis and channels for `napari_sam.view.extract_view`, from the
    layer and the Channels row. Raises UserError for a bad channel choice."""
    axis, text = w.channel_axis_spin.value(), w.channels_edit.text().strip()
    if w.channels_row.isHidden() or axis < 0 or layer.rgb or not text:
        return {"rgb": layer.rgb, "channel_axis": None, "channels": None}
    if axis >= layer.ndim:
        raise UserError(f"Channel axis {axis} does not exist in a {layer.ndim}D layer.")
    try:
        channels = [int(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise UserError(f"Channels must be numbers such as 0,1,2; got {text!r}.") from None
    return {"rgb": False, "channel_axis": axis, "channels": channels}
