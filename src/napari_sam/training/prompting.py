"""Simulated interactive prompting, as in SAM's training: a first point (or box) from
the object, then corrections sampled from where the current mask is wrong."""

from __future__ import annotations

import numpy as np


def first_point(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float]:
    """A pixel of the object, uniformly at random: (row, col)."""
    rows, cols = np.nonzero(mask)
    i = rng.integers(len(rows))
    return float(rows[i]), float(cols[i])


def jittered_box(
    rng: np.random.Generator, mask: np.ndarray, jitter: float = 0.1, max_jitter: float = 20.0
) -> np.ndarray:
    """The object's bounding box (min_row, min_col, max_row, max_col), each corner moved
    by noise of 10 % of the side length (at most 20 px), kept inside the image."""
    rows, cols = np.nonzero(mask)
    box = np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=np.float64)
    sides = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
    box += rng.normal(0, 1, 4) * np.minimum(jitter * sides, max_jitter)
    limit = np.array(mask.shape * 2) - 1
    box = np.clip(box, 0, limit)
    return np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])


def correction_point(
    rng: np.random.Generator, predicted: np.ndarray, truth: np.ndarray
) -> tuple[tuple[float, float], int] | None:
    """A point from the error region: positive (1) where the object was missed, negative
    (0) where the mask spills over. None when the mask is already exact."""
    error = predicted != truth
    rows, cols = np.nonzero(error)
    if len(rows) == 0:
        return None
    i = rng.integers(len(rows))
    row, col = rows[i], cols[i]
    return (float(row), float(col)), int(truth[row, col])
