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


def interleaved(runs: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Equal conditions for every contender: one untimed warm-up call each, then
    `repeats` timed rounds, each calling all of them once, the order rotated from round
    to round (none always first, none always after the same one). Returns, per name,
    the median seconds and the last result."""
    names = list(runs)
    results = {name: runs[name]() for name in names}  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in names}


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
