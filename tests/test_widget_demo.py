import numpy as np

from napari_sam._demo import open_demo
from napari_sam._sample_data import sample_image, sample_stack


def test_sample_data_needs_no_download():
    ((image, meta, kind),) = sample_image()
    assert image.ndim == 2 and kind == "image" and meta["name"] == "coins"
    ((stack, _, _),) = sample_stack()
    assert stack.ndim == 3 and stack.shape[0] > 1
    assert not np.array_equal(stack[2], stack[8])  # slices differ


def test_demo_opens_ready_to_click(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()  # the model cache is empty: the bundled model opens
    widget = open_demo(viewer)
    widget.wait(timeout=60)
    assert widget.model is not None and len(widget.cache) == 1
    assert widget.model_combo.currentData() == "tiny_cells"
    assert viewer.layers.selection.active == widget.points_layer
    assert widget.points_layer.mode == "add"
    widget.points_layer.add([[150, 190]])
    assert len(widget.candidates) == 3


def test_cli_demo_is_wired_to_the_demo(capsys):
    from napari_sam.cli import main

    try:
        main(["demo", "--help"])
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    assert "napari-sam demo" in out and "--model" in out and "--stack" in out
