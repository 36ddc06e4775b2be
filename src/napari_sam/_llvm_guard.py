"""Keep triton out of processes where Mesa's OpenGL driver already loaded libLLVM.

Mesa's drivers (llvmpipe under Xvfb or in VMs, radeonsi on AMD GPUs), which napari's
canvas may use, load the system's libLLVM. Loading triton's own LLVM after it crashes
the process (a segmentation fault, seen with napari under Xvfb). torch imports triton
wherever it is installed (CUDA wheels ship it) as soon as anything imports
torch._dynamo, which many torch functions do lazily, building a model among them. This
package never compiles kernels, so where a libLLVM is loaded and triton is not, triton
is hidden from the process: torch then reports it absent and works without it.
"""

from __future__ import annotations

import sys


def hide_triton_if_llvm_is_loaded() -> bool:
    """Hide triton if a libLLVM is already loaded and triton is not; True if hidden."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    try:
        with open("/proc/self/maps") as maps:
            loaded = any("libLLVM" in line for line in maps)
    except OSError:  # not Linux: no such clash seen
        return False
    if loaded:
        sys.modules["triton"] = None
    return loaded
