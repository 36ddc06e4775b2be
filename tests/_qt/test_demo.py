import subprocess
import sys
import textwrap

import numpy as np

from napari_sam._qt.demo import INSTALL_GUI, open_demo
from napari_sam._sample_data import IHC_NUCLEI, sample_cell, sample_nuclei, sample_stack


def test_sample_data_is_microscopy_that_needs_no_download():
    ((image, meta, kind),) = sample_nuclei()
    assert image.shape == (192, 192, 3) and image.dtype == np.uint8 and meta["rgb"]
    assert kind == "image" and "IHC" in meta["name"]
    # The documented clicks lie on nuclei: haematoxylin (blue) is darker in red than the
    # stroma around them.
    red = image[..., 0].astype(float)
    for row, col in IHC_NUCLEI:
        assert red[row, col] < np.percentile(red, 25), (row, col)
    ((cell, _, _),) = sample_cell()
    assert cell.shape == (660, 550)
    ((stack, _, _),) = sample_stack()
    assert stack.ndim == 3 and stack.shape[0] > 1
    assert not np.array_equal(stack[2], stack[8])  # slices differ


def test_demo_opens_ready_to_click_with_the_whole_image_in_view(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)  # the model cache is empty: tiny_cells opens
    viewer.window.resize(1300, 800)  # the demo's window: the dock narrows the canvas
    qtbot.wait(50)
    widget = open_demo(viewer)
    widget.wait(timeout=60)
    assert widget.model is not None and len(widget.cache) == 1
    assert widget.model_combo.currentData() == "tiny_cells"
    assert viewer.layers.selection.active == widget.points_layer
    assert widget.points_layer.mode == "add"
    # Fitted after docking: the image's world extent fits the canvas left beside the dock.
    canvas = viewer.window._qt_viewer.canvas.size  # (height, width) in screen pixels
    extent = np.ptp(viewer.layers["nuclei (IHC)"].extent.world, axis=0)[-2:]
    assert (extent * viewer.camera.zoom <= np.asarray(canvas) + 1).all()
    widget.points_layer.add([IHC_NUCLEI[0]])
    assert len(widget.candidates) == 3
    chosen = widget.selected.mask
    assert chosen[IHC_NUCLEI[0]] and chosen.sum() < 0.05 * chosen.size  # a nucleus, not all


def test_the_widget_shows_channels_only_for_data_that_can_have_them(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_demo(viewer)
    widget.wait(timeout=60)
    assert widget.channels_row.isHidden()  # an RGB image
    viewer.add_image(np.zeros((2, 32, 32), np.float32), name="two channels")
    assert not widget.channels_row.isHidden()
    assert widget.compute_button.text() == "Compute embedding"


def test_cli_demo_is_wired_to_the_demo(capsys):
    from napari_sam.cli import main

    try:
        main(["demo", "--help"])
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    assert "napari-sam demo" in out and "--model" in out and "--stack" in out


def test_demo_without_a_qt_binding_says_what_to_install():
    script = textwrap.dedent(
        """
        import sys

        class NoQt:  # as if no Qt binding were installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"PyQt5", "PyQt6", "PySide2", "PySide6"}:
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoQt())
        from napari_sam.cli import main
        sys.exit(main(["demo"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert INSTALL_GUI in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 3
