"""One entry point for automatic instance segmentation of a 2D image into a label image.

>>> labels = segment_everything(model, image)                    # (H, W) int32 labels
>>> labels = segment_everything(model, image, method="amg", points_per_side=32)

Methods: "amg" is SAM's automatic mask generation (Kirillov et al. 2023): a grid of point
prompts, filtered by predicted IoU and stability, de-duplicated by NMS
(`AutomaticMaskGenerator`, with `MICROSCOPY_DEFAULTS` unless given). "ais", automatic
instance segmentation from a dense decoder head on the image embedding (micro-sam,
Archit et al. 2025), needs a model that carries such a head; no model loaded by this
version does (the loader does not read micro-sam's `decoder_state` yet), so
`method=None` means "amg" and "ais" says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .generator import MICROSCOPY_DEFAULTS, AutomaticMaskGenerator
from .records import masks_to_labels

__all__ = ["METHODS", "NoObjectsWarning", "segment_everything"]

METHODS = ("amg", "ais")


class NoObjectsWarning(UserWarning):
    """Segment everything found nothing; the message says which filter removed what."""


def segment_everything(
    model,
    image: np.ndarray,
    method: str | None = None,
    *,
    embedding=None,
    progress: Callable[[int, int], object] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **params,
) -> np.ndarray:
    """Every object of a 2D image as an (H, W) int32 label image (0: background; ids
    1..N, smaller objects drawn over larger ones that contain them).

    model: a `Sam`. image: (H, W) gray or (H, W, 3|4) RGB(A), any dtype (for stacks,
    `segment_everything_slices`). method: "amg", "ais" or None (see module docstring).
    embedding: this model's `ImageEmbedding` of the image, to skip the encoder.
    params: the method's parameters (for "amg" those of `AutomaticMaskGenerator`, on top
    of `MICROSCOPY_DEFAULTS`). progress/cancelled: as `AutomaticMaskGenerator.generate`.
    Warns `NoObjectsWarning` with the scores seen when nothing passes the filters.
    Raises ValueError for an unknown method, "ais" on a model without a head, bad
    parameters or an image that is not 2D.
    """
    if method is None:
        method = "amg"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None; got {method!r}.")
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ValueError(
            f"segment_everything takes one 2D image, (H, W) or (H, W, 3|4); got shape "
            f"{image.shape}. For a stack: napari_sam.automatic.segment_everything_slices."
        )
    if method == "ais":
        raise ValueError(
            "This model has no instance segmentation head: method='ais' needs a model "
            "that carries one, and this version loads none yet (micro-sam's decoder_state "
            "is not read); use method='amg' (the grid of point prompts)."
        )
    generator = AutomaticMaskGenerator(model, **{**MICROSCOPY_DEFAULTS, **params})
    records = generator.generate(image, embedding=embedding, progress=progress,
                                 cancelled=cancelled)  # fmt: skip
    if not records:
        why = generator.last_report.why_empty(
            generator.pred_iou_thresh, generator.stability_score_thresh
        )
        warnings.warn(NoObjectsWarning(why), stacklevel=2)
    return masks_to_labels(records, image.shape[:2])
