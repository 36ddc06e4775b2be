"""Make docs/widget.png: napari with the sample nuclei (immunohistochemistry), the widget
docked, one click on a nucleus.

Run under a virtual display: `xvfb-run -a python docs/make_screenshot.py [--model vit_b]`.
Without --model it uses the demo's default: the first downloaded model, else the bundled
tiny_cells.
"""

import argparse
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_sam._qt.demo import open_demo
from napari_sam._sample_data import IHC_NUCLEI

parser = argparse.ArgumentParser()
parser.add_argument("--model")
parser.add_argument("--out", default=str(Path(__file__).with_name("widget.png")))
args = parser.parse_args()

viewer = napari.Viewer(title="napari-sam-labeler")
viewer.window.resize(1300, 800)
widget = open_demo(viewer, args.model)
widget.wait()
# One nucleus committed as a label (filled), a click on another showing the preview
# (outlined), its three candidates in the picker.
widget.points_layer.add([IHC_NUCLEI[1]])
widget.wait()
widget.commit()
widget.points_layer.add([IHC_NUCLEI[0]])
widget.wait()
for _ in range(20):
    QApplication.processEvents()
viewer.screenshot(args.out, canvas_only=False)
print(args.out)
viewer.close()
