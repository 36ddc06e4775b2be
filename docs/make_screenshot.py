"""Make docs/widget.png: napari with the coins sample, the widget docked, one click.

Run under a virtual display: `xvfb-run -a python docs/make_screenshot.py [--model vit_b]`.
Without --model it uses the demo's default: the first downloaded model, else the bundled
tiny_cells.
"""

import argparse
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_sam._demo import open_demo

parser = argparse.ArgumentParser()
parser.add_argument("--model")
args = parser.parse_args()

viewer = napari.Viewer(title="napari-sam-labeler")
viewer.window.resize(1300, 800)
widget = open_demo(viewer, args.model)
widget.wait()
widget.points_layer.add([[100, 100]])
widget.wait()
for _ in range(20):
    QApplication.processEvents()
out = Path(__file__).with_name("widget.png")
viewer.screenshot(str(out), canvas_only=False)
print(out)
viewer.close()
