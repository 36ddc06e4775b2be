"""Python exits cleanly while the widget's workers run (in fresh interpreters).

Qt aborts (SIGABRT) when one of its pool threads still runs as the interpreter tears Qt
down, and Python crashes (SIGSEGV) when Qt destroys queued signals after the
interpreter: both happened at exit whenever the widget was encoding.
"""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import napari
    from skimage import data
    from napari_sam.model import SamConfig, build_sam

    # An encoder of a few seconds on a CPU: still running when the script ends.
    slow = SamConfig(encoder_embed_dim=192, encoder_depth=6, encoder_num_heads=4,
                     encoder_global_attn_indexes=(5,), img_size=1024, prompt_embed_dim=64,
                     decoder_mlp_dim=128, decoder_num_heads=4, iou_head_hidden_dim=64)
    viewers, close = int(sys.argv[1]), sys.argv[2] == "close"
    opened = []
    for _ in range(viewers):
        viewer = napari.Viewer()
        viewer.add_image(data.coins())
        _, widget = viewer.window.add_plugin_dock_widget("napari-sam-labeler",
                                                         "Segment Anything")
        widget.set_model(build_sam(slow).eval())
        assert widget.compute_embedding(wait=False) is False and widget.busy
        opened.append(viewer)
    if close:
        for viewer in opened:
            viewer.close()
    print("script done", flush=True)
    """
)


@pytest.mark.parametrize(
    ("viewers", "close"), [(1, "open"), (2, "close")], ids=["one-left-open", "two-closed"]
)
def test_exit_while_encoding_does_not_crash(tmp_path, viewers, close):
    script = tmp_path / "exit_while_encoding.py"
    script.write_text(SCRIPT)
    for run in range(2):  # before the fix, most runs crashed
        done = subprocess.run(
            [sys.executable, str(script), str(viewers), close],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert "script done" in done.stdout, done.stderr[-2000:]
        assert done.returncode == 0, f"run {run}: exit status {done.returncode}\n" + (
            done.stderr[-2000:]
        )
