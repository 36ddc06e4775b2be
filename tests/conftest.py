import pytest
import torch
import torch._dynamo  # (see below)

# torch.optim imports torch._dynamo, which imports triton where it is installed. Loading
# triton's LLVM after Mesa's libLLVM (loaded by napari's canvas under Xvfb) crashes the
# process, so tests that train after a viewer test would die: import it first, here.
from napari_sam.model import build_sam
from napari_sam.zoo import CACHE_ENV
from tests.reference import TINY, randomize_


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own model cache folder, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_model():
    """A small randomly initialised SAM (256 px input, 4 blocks), for fast tests."""
    torch.manual_seed(0)
    return randomize_(build_sam(TINY).eval(), seed=1)
