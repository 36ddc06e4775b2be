"""Training examples from (image, instance labels) pairs: the labelled 2D slices of nD
data, random crops at random scales, flips, the predictor's own normalisation, and
objects to prompt at every level of a label hierarchy (cell / nucleus / nucleolus)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..image import image_shape_problem, resize_longest_side, to_uint8_rgb
from ..view import extract_view

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


# -- the labelled 2D slices of nD data ------------------------------------------------------
def check_pair(image, labels, *, rgb: bool = False) -> tuple[int, ...]:
    """Raise ValueError unless `labels` is an instance label image (see `check_labels`; 2
    or more dimensions) of `image`'s spatial shape: its shape without the colour axis when
    `rgb`. Returns that spatial shape. Reads no pixels of a lazy (dask, zarr) image."""
    check_labels(labels, ndim=None)
    spatial = tuple(image.shape[:-1] if rgb else image.shape)
    if tuple(labels.shape) != spatial:
        hint = "pick the labels drawn on this image"
        if not rgb and image.ndim == labels.ndim + 1 and image.shape[1:] == labels.shape:
            hint = (
                f"the image looks channel-first (C, H, W) with {image.shape[0]} channels; "
                "put them last (np.moveaxis(image, 0, -1)) and treat them as colour, or "
                "train on one channel, image[c]"
            )
        raise ValueError(
            f"The labels' shape {tuple(labels.shape)} differs from the image's spatial shape "
            f"{spatial}: {hint}."
        )
    return spatial


def labelled_slices(
    image: np.ndarray,
    labels: np.ndarray,
    displayed: Sequence[int] | None = None,
    slice_index: Mapping[int, int] | None = None,
    *,
    rgb: bool = False,
    skip_empty: bool = True,
) -> list[LabelledImage]:
    """2D training examples from an nD image and its labels of the same spatial shape.

    `displayed`: the two (row, col) axes of a 2D example; by default the last two spatial
    axes. `slice_index`: {axis: index} of one 2D slice; None takes every slice (each one a
    separate example). `rgb`: the image's last axis is colour. Slices without any label
    are skipped when `skip_empty`. The examples may share memory with the inputs.

    Raises ValueError when the labels are not integer id images (colour-coded, float,
    bool, negative ids; see `check_labels`), their shape differs from the image's, or
    `slice_index` lacks an axis; IndexError for an index outside its axis.
    """
    image = np.asarray(image) if not hasattr(image, "shape") else image
    spatial = check_pair(image, labels, rgb=rgb)
    ndim = len(spatial)
    if ndim < 2:
        raise ValueError(f"Need 2D or nD images, got a {ndim}D one.")
    displayed = tuple(range(ndim - 2, ndim)) if displayed is None else tuple(displayed)
    others = [axis for axis in range(ndim) if axis not in displayed]
    if slice_index is not None:
        missing = [axis for axis in others if axis not in slice_index]
        if missing:
            raise ValueError(
                f"slice_index {dict(slice_index)} lacks axes {missing}: give an index for "
                f"every axis but the displayed ones {displayed}."
            )
        views = [{axis: int(slice_index[axis]) for axis in others}]
    else:
        views = [
            dict(zip(others, index, strict=True))
            for index in itertools.product(*(range(spatial[axis]) for axis in others))
        ]
    examples = []
    for view in views:
        plane_labels = extract_view(labels, displayed, view)
        if skip_empty and not np.any(plane_labels):
            continue
        plane = extract_view(image, displayed, view, rgb=rgb)
        examples.append(LabelledImage(np.asarray(plane), [np.asarray(plane_labels)]))
    return examples


@dataclass(frozen=True)
class LabelledStack:
    """An image of 2 or more dimensions, its instance labels, and which of its 2D slices
    to train on: what the "Fine-tune SAM" widget gathers from an (image, labels) layer pair.

    `image`: (..., H, W), or (..., H, W, C) when `rgb`; numpy, or a lazy array (dask,
    zarr: only the slices taken are read). `labels`: integer ids of the image's spatial
    shape, 0 = background. `displayed`: the two (row, col) axes of a slice (default: the
    last two spatial axes). `slice_index`: {axis: index} for every other axis, one slice;
    None: every slice that holds a label. `name`: names the pair in error messages.
    """

    image: Any
    labels: Any
    rgb: bool = False
    displayed: tuple[int, int] | None = None
    slice_index: Mapping[int, int] | None = None
    name: str = ""

    def _named(self, error: Exception) -> str:
        return f"{self.name}: {error}" if self.name else str(error)

    def check(self) -> None:
        """Raise ValueError (naming the pair) unless the labels are integer id images of
        the image's spatial shape (see `check_pair`)."""
        try:
            check_pair(self.image, self.labels, rgb=self.rgb)
        except ValueError as error:
            raise ValueError(self._named(error)) from None

    def examples(self) -> list[LabelledImage]:
        """Copies of the chosen slices that hold labels (later edits of `image` and
        `labels` change nothing in them). Raises ValueError naming the pair for labels
        that are not id images, shapes that differ, a slice outside the data."""
        try:
            found = labelled_slices(
                self.image, self.labels, self.displayed, self.slice_index, rgb=self.rgb
            )
        except (ValueError, IndexError) as error:
            raise ValueError(self._named(error)) from None
        return [
            LabelledImage(np.array(item.image), [np.array(level) for level in item.levels])
            for item in found
        ]


def gather_examples(stacks: Iterable[LabelledStack]) -> list[LabelledImage]:
    """The 2D training examples of all `stacks` (see `LabelledStack.examples`), in order.
    Raises ValueError when one is refused, or when none holds a label."""
    stacks = list(stacks)
    items = [item for stack in stacks for item in stack.examples()]
    if not items:
        names = ", ".join(stack.name for stack in stacks if stack.name)
        raise ValueError(
            f"The chosen labels{f' ({names})' if names else ''} are empty: paint some "
            "objects (non-zero ids) first."
        )
    return items
