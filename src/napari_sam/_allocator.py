"""Keep glibc from handing the memory of every click back to the kernel.

A click allocates and frees a few dozen temporaries of 1 to 12 MB (the decoder's
upscaled features, the full-size masks). With glibc's default settings many of these
come from fresh mmap()s, or from heap memory trimmed back to the kernel at the previous
free, so every click first-touches thousands of new pages: 2,500 to 7,000 minor page
faults per click on vit_b, several milliseconds of the ~30 ms it takes on 2 cores.
Serving blocks up to 32 MB from the heap and trimming only above 64 MB of free heap
removes the faults (measured: 0 per click). The cost is bounded: a process keeps at most
64 MB of freed memory for reuse instead of returning it.

Linux with glibc only (elsewhere the allocator differs and this does nothing); set
NAPARI_SAM_KEEP_MALLOC=1 to leave the process's allocator settings alone.
"""

from __future__ import annotations

import ctypes
import os

# mallopt() parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 64 * 2**20

_tuned: bool | None = None


def keep_freed_memory_for_reuse() -> bool:
    """Apply the settings above once per process; True where they are in effect."""
    global _tuned
    if _tuned is None:
        _tuned = _apply()
    return _tuned


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return False


def _apply() -> bool:
    if os.environ.get("NAPARI_SAM_KEEP_MALLOC") or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both or neither: a trim threshold alone would turn
    # off glibc's adaptive mmap threshold and make matters worse.
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
