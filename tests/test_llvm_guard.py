"""Loading a model in a process where napari's canvas loaded Mesa's libLLVM must not
crash (triton's LLVM loaded after it segfaults): see napari_sam._llvm_guard."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

CANVAS_THEN_MODEL = """
import sys
import numpy as np
import napari
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((8, 8)))
from napari_sam import load_model
load_model("tiny_cells", device="cpu")
import torch._dynamo  # torch imports it lazily from many places; this crashed
print("triton hidden:", sys.modules.get("triton", "absent") is None)
"""

GUARD_ALONE = """
import ctypes, sys
from napari_sam._llvm_guard import hide_triton_if_llvm_is_loaded
assert "triton" not in sys.modules
assert hide_triton_if_llvm_is_loaded() is False and "triton" not in sys.modules
ctypes.CDLL(sys.argv[1])
assert hide_triton_if_llvm_is_loaded() is True and sys.modules["triton"] is None
import torch._dynamo  # works with triton hidden
print("ok")
"""


def run(code: str, *args: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "NAPARI_SAM_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180, env=env
    )


def test_a_model_loads_beside_a_napari_canvas(cache):
    done = run(CANVAS_THEN_MODEL, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "triton hidden:" in done.stdout


def llvm_library(folder) -> str:
    """The system's libLLVM, or where there is none a copy of a small library under
    such a name: the guard goes by the names of the loaded libraries."""
    libraries = sorted(glob.glob("/usr/lib/*/libLLVM*.so*") + glob.glob("/lib/*/libLLVM*.so*"))
    if libraries:
        return libraries[-1]
    import _ctypes

    stand_in = folder / "libLLVM-stand-in.so"
    shutil.copy(_ctypes.__file__, stand_in)
    return str(stand_in)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is for Linux only")
def test_triton_is_hidden_only_once_a_libllvm_is_loaded(cache, tmp_path):
    done = run(GUARD_ALONE, llvm_library(tmp_path), cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
