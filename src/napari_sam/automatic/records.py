"""What segment everything finds: `MaskRecord`, one object with its mask kept inside its
box, and `masks_to_labels`, which paints records into one label image without overlaps.

Coordinates are (row, col); a record's `bbox` is (min_row, min_col, max_row, max_col) of
its first and last pixels, inclusive; its `crop_box` has exclusive ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .mask_ops import crop_to_box

__all__ = ["MaskRecord", "inclusive_box", "masks_to_labels", "painted_labels"]


@dataclass(frozen=True)
class MaskRecord:
    """One automatically found object, its mask kept inside its box.

    `bbox_mask` is the mask at rows bbox[0]..bbox[2] and columns bbox[1]..bbox[3] of an
    image of `image_shape`, and the mask is empty elsewhere; `mask` gives the full
    (H, W) array (a new one on each access). An empty mask has bbox (0, 0, 0, 0) and a
    (1, 1) False `bbox_mask`. `MaskRecord.from_mask` makes a record of a full mask.
    Raises ValueError when `bbox_mask` does not fit `bbox` or `bbox` the image.
    """

    bbox_mask: np.ndarray  # (max_row - min_row + 1, max_col - min_col + 1) bool
    area: int  # pixels in the mask
    bbox: tuple[int, int, int, int]  # (min_row, min_col, max_row, max_col), inclusive
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]  # (row, col) of the grid point that produced it
    crop_box: tuple[int, int, int, int]  # (min_row, min_col, max_row, max_col), exclusive
    image_shape: tuple[int, int]  # (H, W) of the image

    def __post_init__(self) -> None:
        r0, c0, r1, c1 = self.bbox
        height, width = self.image_shape
        if self.bbox_mask.shape != (r1 - r0 + 1, c1 - c0 + 1) or not (
            0 <= r0 <= r1 < height and 0 <= c0 <= c1 < width
        ):
            raise ValueError(
                f"A mask of shape {self.bbox_mask.shape} with bbox {self.bbox} does not fit "
                f"an image of shape {self.image_shape}: bbox_mask is the mask inside bbox; "
                "use MaskRecord.from_mask for a full-size mask."
            )

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, made on each access."""
        full = np.zeros(self.image_shape, dtype=bool)
        r0, c0, r1, c1 = self.bbox
        full[r0 : r1 + 1, c0 : c1 + 1] = self.bbox_mask
        return full

    @classmethod
    def from_mask(
        cls,
        mask: np.ndarray,
        predicted_iou: float = 1.0,
        stability_score: float = 1.0,
        point: tuple[float, float] = (0.0, 0.0),
        crop_box: tuple[int, int, int, int] | None = None,
    ) -> MaskRecord:
        """The record of a full (H, W) bool mask; crop_box defaults to the whole image."""
        mask = np.asarray(mask, dtype=bool)
        inside, origin = crop_to_box(mask)
        crop_box = (0, 0, *mask.shape) if crop_box is None else crop_box
        return cls(inside, int(inside.sum()), inclusive_box(inside, origin), predicted_iou,
                   stability_score, point, crop_box, mask.shape)  # fmt: skip


def masks_to_labels(
    records: Sequence[MaskRecord | np.ndarray], shape: tuple[int, ...]
) -> np.ndarray:
    """A label image (int32, 0 = background) without overlaps: record i gets label i + 1.

    records: `MaskRecord`s (painted from their masks inside their boxes, so no full-size
    mask is made) or (H, W) bool masks; shape: (H, W). Raises ValueError when a mask
    does not fit `shape`.

    Where masks overlap, the smaller mask is drawn over the larger one, so objects inside
    others (a nucleus in a cell) stay visible; among masks of equal area, the later one
    wins. A mask wholly covered by smaller ones does not appear.
    """
    labels = np.zeros(tuple(shape), dtype=np.int32)
    pieces = []  # (mask inside its box, the box as slices)
    for item in records:
        if isinstance(item, MaskRecord):
            mask, full_shape = item.bbox_mask, tuple(item.image_shape)
            r0, c0, r1, c1 = item.bbox
            where = (slice(r0, r1 + 1), slice(c0, c1 + 1))
        else:
            mask = np.asarray(item, dtype=bool)
            full_shape, where = mask.shape, (slice(None), slice(None))
        if full_shape != labels.shape:
            raise ValueError(
                f"A mask of shape {full_shape} does not fit labels of shape {labels.shape}."
            )
        pieces.append((mask, where))
    areas = np.array([np.count_nonzero(mask) for mask, _ in pieces])
    # Largest first (stable, so equal areas keep their order and the later one wins).
    for index in np.argsort(-areas, kind="stable"):
        mask, where = pieces[index]
        labels[where][mask] = index + 1
    return labels


def painted_labels(records, shape: tuple[int, ...]) -> np.ndarray:
    """`masks_to_labels` with ids 1..N in the records' order: a mask that smaller ones
    cover wholly leaves no gap in the ids (scikit-image's `relabel_sequential`). What
    "segment everything" gives users; int32 (H, W)."""
    from skimage.segmentation import relabel_sequential

    labels = relabel_sequential(masks_to_labels(records, shape))[0]
    return labels.astype(np.int32, copy=False)


def inclusive_box(inside: np.ndarray, origin: tuple[int, int]) -> tuple[int, int, int, int]:
    """Inclusive box of a mask inside its box, at `origin` (min_row, min_col)."""
    return (origin[0], origin[1], origin[0] + inside.shape[0] - 1, origin[1] + inside.shape[1] - 1)
