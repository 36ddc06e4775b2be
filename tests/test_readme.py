"""The README's Python snippets run as written (offline ones), and all of them parse."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def snippet(marker: str) -> str:
    (found,) = [code for code in snippets() if marker in code]
    return found


def test_every_snippet_parses():
    assert len(snippets()) >= 5
    for code in snippets():
        ast.parse(code)


@pytest.mark.parametrize(
    "marker",
    [
        "add_plugin_dock_widget",
        "AnnotationSession(load_model",
        "predictor.set_image(image)",
        "masks_to_labels(records",
        "propagate(model, volume, 20",
        "segment_everything(load_model",
        "EverythingSegmenter(load_model",
        "TiledPredictor(load_model",
    ],
    ids=["widget script", "session", "quick start", "segment everything", "propagation",
         "entry point", "decode once", "tiles"],
)
def test_offline_snippet_runs(tmp_path, marker):
    code = snippet(marker).replace("napari.run()", "viewer.close()")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
