"""The viewer stays responsive while the image encoder runs in its worker thread."""

import time

import numpy as np
import torch
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_sam.model import SamConfig, build_sam
from tests._qt.helpers import open_widget

# A real encoder computation of a few seconds on a CPU (1024 px input, global attention).
SLOW = SamConfig(
    encoder_embed_dim=192,
    encoder_depth=6,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(5,),
    img_size=1024,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
)


def test_event_loop_keeps_ticking_while_encoding(make_napari_viewer):
    viewer = make_napari_viewer()
    # Enough slices that the loop below reaches 2 s of encoding on a fast machine too
    # (each slice is resized to the model's 1024 px input, whatever its size).
    stack = np.random.default_rng(0).integers(0, 255, (32, 128, 128), dtype=np.uint8)
    viewer.add_image(stack)
    torch.manual_seed(0)
    widget = open_widget(viewer, build_sam(SLOW).eval())

    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    encoding = 0.0
    z = 0
    try:
        while encoding < 2.0 and z < stack.shape[0]:  # at least 2 s of encoder work
            viewer.dims.set_current_step(0, z)
            QApplication.processEvents()
            start = time.perf_counter()
            widget.compute_embedding(wait=False)
            assert widget.busy
            while widget.busy:
                QApplication.processEvents()
                time.sleep(0.002)
            encoding += time.perf_counter() - start
            z += 1
    finally:
        timer.stop()
    assert len(widget.cache) == z
    assert encoding >= 2.0
    gaps = np.diff(ticks)
    print(
        f"encoding {encoding:.1f} s over {z} slices, {len(gaps)} ticks, "
        f"max gap {gaps.max() * 1000:.0f} ms, torch threads {torch.get_num_threads()}"
    )
    assert len(gaps) > 50
    assert gaps.max() < 0.150, f"longest gap {gaps.max() * 1000:.0f} ms"


def test_event_loop_keeps_ticking_while_propagating(make_napari_viewer):
    from napari_sam import load_model
    from tests.stand_ins import ellipsoid_stack

    volume, _ = ellipsoid_stack(shape=(40, 512, 512), radii=(15, 80, 64))
    viewer = make_napari_viewer()
    viewer.add_image(volume)
    widget = open_widget(viewer, load_model("tiny_cells"))
    # A 160 x 128 px object fills most of a 256 px tile, where the bundled model finds
    # half of it: decoded on the whole view, as for any object that large.
    widget.tiled_check.setChecked(False)
    viewer.dims.set_current_step(0, 20)
    assert widget.compute_embedding(wait=True)
    widget.points_layer.add([[20, 256, 256]])
    widget.wait()
    # Drawing the result adds a Labels layer, which costs napari itself about 0.14 s of
    # the GUI thread (measured with cProfile: vispy visuals and overlays): timed apart.
    drawing = []
    draw = widget.propagation.draw

    def timed_draw(labels):
        drawing.append(time.perf_counter())
        draw(labels)
        drawing.append(time.perf_counter())

    widget.propagation.draw = timed_draw
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    try:
        widget.propagate(wait=False)  # embeds the slices it reaches, then decodes, in a worker
        assert widget.propagation.busy
        while widget.propagation.busy:
            QApplication.processEvents()
            time.sleep(0.002)
        for _ in range(10):  # the result drawn into its layer
            QApplication.processEvents()
            time.sleep(0.01)
    finally:
        timer.stop()
    seconds = time.perf_counter() - start
    (obj,) = widget.session.propagation.objects
    assert len(obj.slices) > 20 and len(widget.cache) > 20  # the slices were embedded
    ticks = np.asarray(ticks)
    drawn_from, drawn_to = drawing
    # The gaps between ticks, but for the one the drawing falls in.
    gaps = np.diff(ticks)[~((ticks[:-1] <= drawn_from) & (ticks[1:] >= drawn_to))]
    print(f"propagation {seconds:.1f} s, {len(obj.slices)} slices, "
          f"max gap {gaps.max() * 1000:.0f} ms, drawing {(drawn_to - drawn_from) * 1000:.0f} ms")
    assert gaps.max() < 0.150, f"longest gap {gaps.max() * 1000:.0f} ms"
    assert drawn_to - drawn_from < 0.5
