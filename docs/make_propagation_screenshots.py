"""Make docs/propagation_*.png: a short sequence showing the widget's Propagate on a z-stack.

1. a click on slice 20 of a noisy ellipsoid (the preview);
2. Propagate: the "SAM propagation" layer, shown on slice 26;
3. a correction clicked on slice 30, then applied with Propagate;
4. Commit: one label id through the stack, shown on slice 26;
5. the committed object in 3D.
(Files: propagation_1_click, 2_propagated, 3_correction_click, 4_corrected, 5_committed,
6_3d.)

Run under a virtual display: `xvfb-run -a python docs/make_propagation_screenshots.py`.
Uses the bundled tiny_cells model (no download); the stack comes from the tests' stand-ins.
"""

import argparse
import sys
from pathlib import Path

import napari
from napari._qt.dialogs.qt_notification import NapariQtNotification
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_sam._qt.propagation_panel import PROPAGATION_LAYER

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.stand_ins

from tests.stand_ins import ellipsoid_stack  # noqa: E402

MAX_WIDTH = 1300  # screenshots wider than this (high-DPI) are scaled down

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="tiny_cells")
parser.add_argument("--out", default=str(Path(__file__).parent))
args = parser.parse_args()
out = Path(args.out)


def settle() -> None:
    for _ in range(20):
        QApplication.processEvents()


def shoot(name: str) -> None:
    settle()
    path = out / name
    viewer.screenshot(str(path), canvas_only=False)
    picture = Image.open(path)
    if picture.width > MAX_WIDTH:
        height = round(picture.height * MAX_WIDTH / picture.width)
        picture = picture.resize((MAX_WIDTH, height), Image.LANCZOS)
    # An adaptive palette keeps the PNGs small; the overlays' few colours survive it.
    picture.convert("RGB").quantize(colors=256).save(path, optimize=True)
    print(path, f"{path.stat().st_size // 1024} KB")


def go_to(index: int) -> None:
    viewer.dims.set_current_step(0, index)
    settle()


volume, _truth = ellipsoid_stack(radii=(15, 20, 16))
viewer = napari.Viewer(title="napari-sam-labeler")
viewer.window.resize(1300, 800)
viewer.add_image(volume, name="stack")
viewer.dims.axis_labels = ("z", "y", "x")  # as a reader of z-stacks names them
_dock, widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler", "Segment Anything")
widget.set_model(args.model)
settle()
viewer.reset_view()
viewer.camera.zoom *= 1.6  # the ellipsoid is in the middle third of the slice

# 1. A click on the ellipsoid on slice 20: the preview outlines the mask.
go_to(20)
widget.compute_embedding(wait=True)
widget.points_layer.add([[20, 64, 64]])
widget.wait()
shoot("propagation_1_click.png")

# 2. Propagate: every slice the object reaches, in its own layer; shown on another slice.
assert widget.propagate(wait=True), widget.status_label.text()
go_to(26)
shoot("propagation_2_propagated.png")

# 3. A correction on slice 30: a point there (its candidates in the picker), then
# Propagate applies the one selected.
go_to(30)
widget.compute_embedding(wait=True)
widget.points_layer.add([[30, 64, 64]])
widget.wait()
shoot("propagation_3_correction_click.png")
assert widget.propagate(wait=True), widget.status_label.text()
shoot("propagation_4_corrected.png")

# 4. Commit: one label id through the stack, as one undo step.
assert widget.commit() == [1], widget.status_label.text()
go_to(26)
shoot("propagation_5_committed.png")

# 5. The committed object in 3D (the stack hidden so the label shows); the emptied
# propagation layer is hidden, for the next propagation.
assert not viewer.layers[PROPAGATION_LAYER].visible
viewer.layers["stack"].visible = False
widget.output_layer.opacity = 1.0  # the shaded surface is dark at the default 0.7
viewer.dims.ndisplay = 3
settle()
for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
    toast.close()
viewer.reset_view()
viewer.camera.angles = (0, -35, 55)
viewer.camera.zoom *= 2.0
shoot("propagation_6_3d.png")
viewer.close()
