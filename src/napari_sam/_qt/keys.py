"""The widget's keyboard shortcuts, bound on the viewer while the widget is open."""

from __future__ import annotations

from ._messages import notify

__all__ = ["KEYS", "NEGATIVE_MODIFIER", "KeyBindings", "keys_help"]

# Keys no napari layer (Points, Shapes, Labels, Image) nor the viewer binds by default.
KEYS = {
    "K": ("commit", "commit the preview (or the propagation) as new label(s)"),
    "Q": ("clear", "clear prompts and preview"),
    "N": ("toggle_polarity", "toggle negative / positive points"),
    "G": ("next_candidate", "next candidate"),
    "8": ("select_whole", "whole"),
    "9": ("select_part", "part"),
    "0": ("select_subpart", "subpart"),
    "J": ("propagate", "propagate through the stack / apply a correction"),
    "H": ("divide", "divide a tracked object (a point on each daughter)"),
}
NEGATIVE_MODIFIER = "Control"  # Ctrl-click adds a negative point


def keys_help() -> str:
    """The shortcuts as rich text, for a label under the widget."""
    lines = [f"<b>{key}</b>: {text}" for key, (_, text) in KEYS.items()]
    lines.append(f"<b>{NEGATIVE_MODIFIER}-click</b>: negative point")
    return f"<small>{'<br>'.join(lines)}</small>"


class KeyBindings:
    """Binds every free key of `KEYS` on `viewer` to the method of `target` it names;
    a key the viewer already binds is left alone, with a warning."""

    def __init__(self, viewer, target) -> None:
        from napari.utils.key_bindings import coerce_keybinding

        self.viewer = viewer
        self.bound: list[str] = []
        for key, (method, _) in KEYS.items():
            if coerce_keybinding(key) in viewer.keymap:
                notify(f"Segment Anything: key {key} is taken; use the buttons instead.",
                       "warning")  # fmt: skip
                continue
            viewer.bind_key(key, _handler(target, method))
            self.bound.append(key)

    def unbind(self) -> None:
        for key in self.bound:
            self.viewer.bind_key(key, None)
        self.bound.clear()


def _handler(target, method: str):
    def handler(_viewer):
        getattr(target, method)()

    handler.__name__ = f"sam_{method}"
    return handler
