"""Training examples from (image, instance labels) pairs: random crops at random scales,
flips, the predictor's own normalisation, and objects to prompt at every level of a
label hierarchy (cell / nucleus / nucleolus)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..image import image_shape_problem, resize_longest_side, to_uint8_rgb

_RGB_TO_IDS = (
    "_, ids = np.unique(rgb.reshape(-1, rgb.shape[-1]), axis=0, return_inverse=True); "
    "labels = ids.reshape(rgb.shape[:-1])"
)


def check_labels(labels, ndim: int | None = 2, name: str = "Labels") -> None:
    """Raise ValueError unless `labels` is an instance label image: integer ids, 0 for
    background and one id per object, of `ndim` dimensions (None: any, 2 or more).

    Refused, each with how to convert: colour-coded label images (a last axis of 3 or 4
    colours), float or bool images, negative ids. Values are read (for the negative-id
    check) only of numpy arrays, so that a lazy (dask, zarr) volume is not loaded."""
    shape, dtype = tuple(labels.shape), np.dtype(labels.dtype)
    need = "integer id images (H, W) with 0 as background and one id per object"
    if len(shape) >= 3 and shape[-1] in (3, 4) and (ndim is None or len(shape) != ndim):
        raise ValueError(
            f"{name} of shape {shape} ({dtype}) look colour-coded (one colour per object); "
            f"labels must be {need}. Convert with: {_RGB_TO_IDS} (black becomes 0 when "
            "the background is black; else set the background's id to 0)."
        )
    if dtype == np.bool_:
        raise ValueError(
            f"{name} of shape {shape} are a binary mask; labels must be {need}. Give each "
            "object its own id, e.g. skimage.measure.label(mask)."
        )
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"{name} of shape {shape} hold {dtype} values; labels must be {need}. Whole "
            "numbers convert with labels.astype(np.int32); a probability map must be "
            "thresholded and labelled first, e.g. skimage.measure.label(prob > 0.5)."
        )
    if ndim is not None and len(shape) != ndim:
        raise ValueError(
            f"{name} must be {ndim}D (got shape {shape}); use labelled_slices() to cut "
            "nD data into 2D examples."
        )
    if len(shape) < 2:
        raise ValueError(f"{name} must be 2D or nD, got shape {shape}.")
    if isinstance(labels, np.ndarray) and labels.size and np.issubdtype(dtype, np.signedinteger):
        lowest = int(labels.min())
        if lowest < 0:
            raise ValueError(
                f"{name} hold negative ids (down to {lowest}); labels must be {need}. "
                "Where negative values mark background, set them to 0: labels[labels < 0] "
                "= 0; else renumber the objects from 1."
            )


@dataclass
class LabelledImage:
    """A 2D image, (H, W) gray or (H, W, C) with C in 1, 3, 4, and one or more instance
    label images (H, W) of integer ids, 0 = background, ordered from whole to subpart
    (one level for ordinary annotations). Raises ValueError for other shapes or dtypes."""

    image: np.ndarray
    levels: Sequence[np.ndarray]

    def __post_init__(self) -> None:
        for labels in self.levels:
            check_labels(labels)
        problem = image_shape_problem(self.image.shape)
        if problem:
            raise ValueError(problem)
        shape = self.image.shape[:2]
        for labels in self.levels:
            if labels.shape != shape:
                raise ValueError(
                    f"Labels of shape {labels.shape} do not match the image's {shape}."
                )


@dataclass
class Example:
    """One augmented crop in the model's input frame."""

    pixels: np.ndarray  # (h, w, 3) uint8, longest side = img_size
    levels: list[np.ndarray]  # (h, w) int label images, resized with nearest neighbour


Source = Callable[[np.random.Generator], LabelledImage]


def from_pairs(pairs: Sequence[LabelledImage]) -> Source:
    """A source drawing uniformly from fixed pairs (e.g. a user's layers)."""
    if not pairs:
        raise ValueError("No training images: give at least one (image, labels) pair.")
    return lambda rng: pairs[rng.integers(len(pairs))]


def augment(
    rng: np.random.Generator,
    item: LabelledImage,
    img_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> Example:
    """A random square-ish crop whose side is img_size times a random scale (bounded by
    the image), random flips and transposition, resized so its longest side is img_size."""
    height, width = item.image.shape[:2]
    side = int(img_size * np.exp(rng.uniform(*np.log(scale_range))))
    crop_h, crop_w = min(side, height), min(side, width)
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    image = item.image[window]
    levels = [labels[window] for labels in item.levels]
    if rng.random() < 0.5:
        image, levels = image[:, ::-1], [lv[:, ::-1] for lv in levels]
    if rng.random() < 0.5:
        image, levels = image[::-1], [lv[::-1] for lv in levels]
    if rng.random() < 0.5:
        image = np.swapaxes(image, 0, 1)
        levels = [lv.T for lv in levels]
    pixels = resize_longest_side(to_uint8_rgb(np.ascontiguousarray(image)), img_size)
    size = (pixels.shape[1], pixels.shape[0])
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(lv).astype(np.int32)).resize(
                size, Image.Resampling.NEAREST
            )
        )
        for lv in levels
    ]
    return Example(pixels, resized)


def choose_objects(
    rng: np.random.Generator, example: Example, count: int, min_area: int = 4
) -> list[tuple[int, int]]:
    """Up to `count` objects drawn from all levels, each instance equally likely, as
    (level, label id) pairs."""
    candidates = []
    for level, labels in enumerate(example.levels):
        ids, areas = np.unique(labels, return_counts=True)
        candidates += [
            (level, int(i)) for i, a in zip(ids, areas, strict=True) if i and a >= min_area
        ]
    if not candidates:
        return []
    picks = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[p] for p in picks]


@dataclass
class Batch:
    """The examples of one training step and the objects to prompt in each."""

    examples: list[Example]
    objects: list[list[tuple[int, int]]]  # per example: (level, label id)


def draw_batch(
    source: Source,
    seed: int,
    step: int,
    count: int,
    img_size: int,
    scale_range: tuple[float, float],
    objects_per_image: int,
) -> Batch:
    """The batch of `step`: the same for the same (seed, step), wherever it is drawn
    (a worker process or the training loop itself)."""
    examples, objects = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, step, index])
        example = augment(rng, source(rng), img_size, scale_range)
        examples.append(example)
        objects.append(choose_objects(rng, example, objects_per_image))
    return Batch(examples, objects)
