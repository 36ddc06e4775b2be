"""The model and device choices every widget offers, and the checkpoint file dialog:
one copy, so the widgets cannot drift apart."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFileDialog, QWidget

__all__ = [
    "CHECKPOINT_FILTER",
    "LOCAL_FILE",
    "ask_checkpoint",
    "device_choices",
    "fill_combo",
    "model_choices",
]

LOCAL_FILE = "local file..."
# Every format `napari_sam.zoo.load_checkpoint` reads.
CHECKPOINT_FILTER = "Checkpoints (*.pth *.pt *.ckpt *.safetensors);;All (*)"


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


def fill_combo(combo: QComboBox, items: list[tuple[str, str]], select: str | None) -> None:
    """Replace a combo box's (label, data) items; select the item whose data is
    `select` when there is one, else the first."""
    combo.clear()
    for label, data in items:
        combo.addItem(label, data)
    combo.setCurrentIndex(max(0, combo.findData(select)))


def ask_checkpoint(parent: QWidget) -> str | None:
    """Ask for a checkpoint file to load; None when the dialog was cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "SAM checkpoint", "", CHECKPOINT_FILTER)
    return path or None
