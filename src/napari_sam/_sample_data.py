"""Sample data that needs no download: real microscopy bundled with scikit-image, and a
synthetic 3D stack of blobs whose cross-sections change from slice to slice."""

from __future__ import annotations

import numpy as np

# Stroma between two glands of scikit-image's immunohistochemistry image (rows, cols):
# separate haematoxylin-stained nuclei, large enough for the bundled model's 256 px input.
IHC_CROP = (slice(256, 448), slice(128, 320))
# (row, col) of nuclei in that crop: where the demo, the README and the screenshot click.
IHC_NUCLEI = ((137, 53), (169, 45), (102, 60))


def nuclei_ihc() -> np.ndarray:
    """(192, 192, 3) uint8 RGB: nuclei (blue, haematoxylin) in tissue stained for a
    membrane protein (brown, DAB); a crop of `skimage.data.immunohistochemistry()`."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry()[IHC_CROP])


def sample_nuclei():
    """Nuclei in tissue (immunohistochemistry, 2D RGB)."""
    return [(nuclei_ihc(), {"name": "nuclei (IHC)", "rgb": True}, "image")]


def sample_cell():
    """One cell (660 x 550, uint8): scikit-image's `cell`, a cell floating in saline."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def blobs_stack(shape: tuple[int, int, int] = (16, 192, 192), count: int = 12, seed: int = 0):
    """A (Z, Y, X) float32 stack of smooth ellipsoids on a noisy background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    stack = np.zeros(shape, np.float32)
    for _ in range(count):
        centre = rng.uniform([2, 20, 20], [shape[0] - 2, shape[1] - 20, shape[2] - 20])
        radii = rng.uniform([3, 10, 10], [7, 24, 24])
        distance = (
            ((z - centre[0]) / radii[0]) ** 2
            + ((y - centre[1]) / radii[1]) ** 2
            + ((x - centre[2]) / radii[2]) ** 2
        )
        stack = np.maximum(stack, rng.uniform(0.5, 1.0) * np.clip(1.5 - distance, 0, 1))
    stack += rng.normal(0, 0.03, shape).astype(np.float32)
    return stack


def sample_stack():
    """A synthetic 3D stack (16 x 192 x 192) of blobs."""
    return [(blobs_stack(), {"name": "blobs 3D"}, "image")]
