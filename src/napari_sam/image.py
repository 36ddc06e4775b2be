"""Turning a user's 2D image into what SAM expects: uint8 RGB, longest side resized.

Normalisation rule (documented in README): uint8 is used as is; bool maps to 0/255;
every other dtype is scaled linearly so that its 0.5th percentile becomes 0 and its
99.5th percentile 255, clipping outside (robust to hot pixels and dark corners). When
those percentiles coincide (e.g. sparse objects on a flat background) the minimum and
maximum are used instead; a constant image becomes black. NaN and inf are left out of
the statistics and become 0, with a warning. RGB(A) is scaled jointly, which keeps the
colour balance; alpha is dropped; gray becomes three equal channels.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

ROBUST_PERCENTILES = (0.5, 99.5)
_MAX_STATISTICS_SAMPLES = 1 << 22  # percentiles of a regular subsample of huge images


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Return an (H, W, 3) uint8 array for an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
    image of any real or bool dtype, following the module's normalisation rule."""
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Expected a 2D image (H, W) or (H, W, C) with C in 1, 3, 4; got shape {array.shape}. "
            "For nD data pass one 2D slice, e.g. image[z]."
        )
    if array.ndim == 3:
        channels = array.shape[-1]
        if channels == 4:
            array = array[..., :3]
        elif channels == 1:
            array = array[..., 0]
        elif channels != 3:
            raise ValueError(
                f"An image with {channels} channels (shape {array.shape}) is neither gray nor "
                "RGB(A): pick one channel or three to form the view, e.g. image[..., [0, 1, 2]]."
            )
    if array.size == 0:
        raise ValueError(f"The image is empty (shape {np.shape(image)}).")
    if array.dtype == np.uint8:
        scaled = array
    elif array.dtype == np.bool_:
        scaled = array.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating):
        scaled = _scale_to_uint8(array)
    else:
        raise TypeError(
            f"Images of dtype {array.dtype} are not supported; convert to a real number dtype."
        )
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return np.ascontiguousarray(scaled)


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    finite = np.isfinite(array) if np.issubdtype(array.dtype, np.floating) else None
    if finite is not None and not finite.all():
        warnings.warn(
            f"The image holds {int(array.size - finite.sum())} NaN or infinite values; "
            "they are shown as 0.",
            RuntimeWarning,
            stacklevel=3,
        )
        values = array[finite]
    else:
        finite = None
        values = array.ravel()
    if values.size == 0:
        return np.zeros(array.shape, np.uint8)
    step = -(-values.size // _MAX_STATISTICS_SAMPLES)
    sample = values[::step].astype(np.float64)
    low, high = np.percentile(sample, ROBUST_PERCENTILES)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    # float32 suffices for 256 output levels and halves the memory of huge images.
    work = np.float64 if array.dtype.itemsize >= 8 else np.float32
    unit = (array.astype(work) - work(low)) / work(high - low)
    if finite is not None:
        unit[~finite] = 0.0
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def resized_shape(height: int, width: int, longest_side: int) -> tuple[int, int]:
    """Shape after scaling so that the longest side becomes `longest_side` (rounded)."""
    scale = longest_side / max(height, width)
    # At least one pixel: a 1 x 3000 line must not vanish.
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_longest_side(image: np.ndarray, longest_side: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image (Pillow, antialiased when shrinking,
    the resampling the official models were trained with)."""
    height, width = resized_shape(*image.shape[:2], longest_side)
    if (height, width) == image.shape[:2]:
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.array(resized)  # writable, so torch can take it without a copy warning
