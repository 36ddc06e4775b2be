"""`napari-sam demo`: napari with a sample image and the Segment Anything widget docked.

The model is the first one already downloaded into the model cache, else the bundled
`tiny_cells`: the demo never waits for a download and works offline.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

WIDGET = ("napari-sam-labeler", "Segment Anything")


def open_demo(viewer, model: str | None = None, stack: bool = False):
    """Add the sample data and the docked widget to `viewer`; returns the widget."""
    from ._sample_data import sample_image, sample_stack

    for data, kwargs, _ in sample_stack() if stack else sample_image():
        viewer.add_image(data, **kwargs)
    _dock, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    from .zoo import default_model

    widget.set_model(model or default_model(), wait=True)
    widget.compute_embedding(wait=False)
    return widget


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-sam demo", description=__doc__)
    parser.add_argument(
        "--model", help="zoo name or checkpoint (default: first downloaded, else tiny_cells)"
    )
    parser.add_argument("--stack", action="store_true", help="open the 3D sample stack")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-sam-labeler demo")
    open_demo(viewer, args.model, args.stack)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
