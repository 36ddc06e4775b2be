"""Box non-maximum suppression and the clean-up of masks kept inside their boxes.

Boxes follow the mask convention of the package: (min_row, min_col, max_row, max_col)
of the first and last mask pixels, inclusive; IoU between boxes uses the area
(max_row - min_row) * (max_col - min_col), as the reference's box NMS does.
`remove_small_regions` works on a mask inside its box with the result it has on the
full mask.
"""

from __future__ import annotations

import numpy as np
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Boxes are visited by decreasing score (ties in their given order); each kept box
    removes the later ones whose IoU with it exceeds `iou_threshold`.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    ordered = boxes.cpu().float()[order]
    areas = box_area(ordered)
    removed = np.zeros(len(ordered), dtype=bool)
    kept = []
    for i in range(len(ordered)):
        if removed[i]:
            continue
        kept.append(i)
        rest = ordered[i + 1 :]
        if len(rest) == 0:
            break
        top_left = torch.maximum(ordered[i, :2], rest[:, :2])
        bottom_right = torch.minimum(ordered[i, 2:], rest[:, 2:])
        overlap = (bottom_right - top_left).clamp(min=0).prod(1)
        iou = overlap / (areas[i] + areas[i + 1 :] - overlap)
        removed[i + 1 :] |= (iou > iou_threshold).numpy()
    return order[torch.tensor(kept, dtype=torch.int64)]


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive box (min_row, min_col, max_row, max_col) of a 2D bool mask; zeros when
    it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1]))


def crop_to_box(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2D bool mask inside its box (a copy) and the box's (min_row, min_col); an empty
    mask gives a (1, 1) False array at (0, 0)."""
    r0, c0, r1, c1 = mask_bbox(mask)
    return mask[r0 : r1 + 1, c0 : c1 + 1].copy(), (r0, c0)


def remove_small_regions(
    mask: np.ndarray, origin: tuple[int, int], image_shape: tuple[int, int], min_area: int
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """Fill the holes, then drop the islands, smaller than `min_area` pixels
    (8-connected; the largest island stays when all are small) of a mask given inside its
    box: `mask` (h, w) bool is the image's mask at rows origin[0].. and columns
    origin[1].. of an image of `image_shape` (H, W) and is empty elsewhere. The result
    is the one on the full (H, W) mask, as (mask inside its new box, the box's origin,
    whether anything changed). A mask of the whole image is the case origin (0, 0),
    mask.shape == image_shape."""
    from skimage.measure import label

    mask, origin, filled = _fill_small_holes(mask, origin, image_shape, min_area)
    regions, count = label(mask, connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    if count == 0 or (sizes >= min_area).all():
        return mask, origin, filled
    big = np.flatnonzero(sizes >= min_area) + 1
    if len(big) == 0:
        big = np.array([np.argmax(sizes) + 1])
    mask, (r0, c0) = crop_to_box(np.isin(regions, big))
    return mask, (origin[0] + r0, origin[1] + c0), True


def _fill_small_holes(mask, origin, image_shape, min_area):
    """The holes step of `remove_small_regions`. Background touching the box's edge
    continues outside it: the box is padded by one pixel on each side that is not an
    image edge, and the pixels of the image outside the box count in the size of the
    background region they belong to."""
    from skimage.measure import label

    (height, width), (r0, c0), (h, w) = image_shape, origin, mask.shape
    top, bottom, left, right = r0 > 0, r0 + h < height, c0 > 0, c0 + w < width
    pad = ((int(top), int(bottom)), (int(left), int(right)))
    regions, count = label(np.pad(~mask, pad, constant_values=True), connectivity=2,
                           return_num=True)  # fmt: skip
    weights = np.pad(np.ones(mask.shape), pad)
    # The image outside the box: above and below it apart when the box spans the image's
    # width, left and right apart when it spans the height, else one region around it.
    # Its size is carried by one pad pixel of each part.
    if not (left or right):
        parts = [((0, 0), r0 * width, top), ((-1, 0), (height - r0 - h) * width, bottom)]
    elif not (top or bottom):
        parts = [((0, 0), c0 * height, left), ((0, -1), (width - c0 - w) * height, right)]
    else:
        corner = (0, 0) if top or left else (-1, 0) if bottom else (0, -1)
        parts = [(corner, height * width - h * w, True)]
    for pixel, size, present in parts:
        if present:
            weights[pixel] += size
    sizes = np.bincount(regions.ravel(), weights.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if len(small) == 0:
        return mask, origin, False
    inside = (slice(pad[0][0], pad[0][0] + h), slice(pad[1][0], pad[1][0] + w))
    on_pad = np.ones(regions.shape, bool)
    on_pad[inside] = False
    if np.isin(regions[on_pad], small).any():
        # A small background region reaches outside the box (an image hardly larger than
        # min_area): fill it on the full mask, where the box may grow.
        full = np.zeros(image_shape, bool)
        full[r0 : r0 + h, c0 : c0 + w] = mask
        full, _, changed = _fill_small_holes(full, (0, 0), image_shape, min_area)
        return (*crop_to_box(full), changed)
    return mask | np.isin(regions[inside], small), origin, True
