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
    image of any real or bool dtype, following the module's normalisation rule.

    Raises ValueError for any other shape (a stack, channels first, other channel
    counts, nD data), naming the shape and how to take a 2D image from it."""
    array = np.asarray(image)
    if array.size == 0:
        raise ValueError(f"The image is empty (shape {array.shape}).")
    problem = image_shape_problem(array.shape)
    if problem:
        raise ValueError(problem)
    if array.ndim == 3:
        array = array[..., :3] if array.shape[-1] == 4 else array
        array = array[..., 0] if array.shape[-1] == 1 else array
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


_MAX_CHANNELS = 8  # a leading axis up to this long may be channels; longer is a stack


def image_shape_problem(shape: tuple[int, ...]) -> str | None:
    """None when `shape` is a 2D image SAM takes ((H, W), or (H, W, C) with C in 1, 3, 4);
    else what the array looks like and a concrete way to take one 2D image from it."""
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if ndim == 2 or (ndim == 3 and shape[-1] in (1, 3, 4)):
        return None
    if ndim == 3:
        first, last = shape[0], shape[-1]
        pick = "image[..., 0] or image[..., [0, 1, 2]]"
        if last <= _MAX_CHANNELS and last < first:  # a short last axis: channels last
            return (
                f"An image of shape {shape} has {last} channels (H, W, C), neither gray nor "
                f"RGB(A): pick one channel or three to form the view, e.g. {pick}."
            )
        if first > _MAX_CHANNELS:
            other = (
                f" If it is one image with {last} channels (H, W, C), pick one or three: {pick}."
                if last < first
                else ""
            )
            return (
                f"An array of shape {shape} looks like a stack of {first} 2D images "
                f"(Z, H, W), not one image: pass one plane, e.g. image[{first // 2}] "
                f"(image[z] for plane z).{other}"
            )
        to_rgb = (
            "np.moveaxis(image, 0, -1) is the (H, W, C) RGB(A) image"
            if first in (3, 4)
            else "np.moveaxis(image, 0, -1)[..., [0, 1, 2]] puts three of them last as RGB"
        )
        return (
            f"An array of shape {shape} looks like {first} channels first (C, H, W), or a "
            f"stack of {first} planes (Z, H, W), not one image: for channels, {to_rgb} "
            "(or image[c] takes channel c alone); for a stack, pass one plane, e.g. image[0]."
        )
    if ndim in (4, 5):
        colour = shape[-1] in (3, 4)
        axes, example = {
            (4, True): ("(Z, H, W, C) or (T, H, W, C): a stack of colour images", "image[z]"),
            (4, False): ("(T, Z, H, W) or (Z, C, H, W)", "image[t, z] or image[z, c]"),
            (5, True): ("(T, Z, H, W, C)", "image[t, z]"),
            (5, False): ("(T, Z, C, H, W) or (T, C, Z, H, W)", "image[t, z, c]"),
        }[ndim, colour]
        index = ", ".join("0" * (ndim - (3 if colour else 2)))
        return (
            f"An array of shape {shape} is {ndim}D, e.g. {axes}; SAM takes one 2D image "
            f"(H, W) or (H, W, C): pick one 2D plane, e.g. image[{index}] ({example})."
        )
    return (
        f"Expected a 2D image (H, W) or (H, W, C) with C in 1, 3, 4; got shape {shape}. "
        "Pass one 2D plane of the data, e.g. image[z]."
    )


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
