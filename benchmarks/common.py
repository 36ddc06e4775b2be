"""Shared pieces of the benchmarks: the reference twins, a test image, a timer."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import twin_models  # noqa: F401  (re-exported for the scripts)


def test_image(size: int = 1024) -> np.ndarray:
    """A natural RGB photo (bundled with scikit-image), resized to size x size."""
    from PIL import Image
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((size, size)))  # writable


def timed(function, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
