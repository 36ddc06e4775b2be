"""What the plugin's widgets tell the user: napari notifications, and the error type for
problems a user can fix (shown as a message, never as a traceback)."""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; shown as a notification, never as a traceback."""


def notify(message: str, level: str = "info") -> None:
    """Show `message` as a napari notification of `level` info, warning or error."""
    from napari.utils.notifications import show_error, show_info, show_warning

    {"info": show_info, "warning": show_warning, "error": show_error}[level](message)
