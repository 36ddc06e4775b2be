"""`napari-sam demo`: napari with a sample microscopy image and the Segment Anything
widget docked, the model loaded and the embedding computed: ready to click.

The model is the first one already downloaded into the model cache, else the bundled
`tiny_cells`: the demo never waits for a download and works offline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

WIDGET = ("napari-sam-labeler", "Segment Anything")
INSTALL_GUI = 'pip install "napari-sam-labeler[all]"'


def open_demo(viewer, model: str | None = None, stack: bool = False):
    """Add the sample data and the docked widget to `viewer`; returns the widget."""
    from qtpy.QtWidgets import QApplication

    from .._sample_data import sample_nuclei, sample_stack

    for data, kwargs, _ in sample_stack() if stack else sample_nuclei():
        viewer.add_image(data, **kwargs)
    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    QApplication.processEvents()  # the dock takes its width from the canvas...
    viewer.reset_view()  # ...so fit the image to what is left
    from ..zoo import default_model

    widget.set_model(model or default_model(), wait=True)
    widget.compute_embedding(wait=False)
    return widget


def qt_binding_problem() -> str | None:
    """Why napari cannot open a window here (no Qt binding installed), or None."""
    try:
        import qtpy  # noqa: F401  (raises when no Qt binding is installed)
    except Exception as error:  # qtpy's QtBindingsNotFoundError and relatives
        return (
            f"napari-sam demo needs a Qt GUI backend for napari, and none is installed "
            f"({type(error).__name__}). Install one with:\n    {INSTALL_GUI}"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-sam demo", description=__doc__)
    parser.add_argument(
        "--model", help="zoo name or checkpoint (default: first downloaded, else tiny_cells)"
    )
    parser.add_argument("--stack", action="store_true", help="open the 3D sample stack")
    args = parser.parse_args(argv)

    problem = qt_binding_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    import napari

    viewer = napari.Viewer(title="napari-sam-labeler demo")
    open_demo(viewer, args.model, args.stack)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
