"""What propagation asks of each slice: the prompts it derives from the neighbouring
slice's mask (and from the objects next to it), the rule that says the object has ended,
and how objects decoded together share a slice.

Pure numpy/scipy. The prompts are those of micro-sam's projection of a mask to the next
slice (Archit et al., Nature Methods 2025): the previous slice's low-res logits as SAM's
mask prompt, its bounding box, a point inside it. Which of them, and the stop thresholds,
were chosen by `benchmarks/bench_propagate.py --sweep` with the bundled model on
generated stacks: one interior point, SAM's three candidates, the one continuing the
previous mask best (mean 3D IoU 0.72; mask + box 0.5 or less, as the mask shrinks from
slice to slice); stability did not separate object from background slices there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PropagationSettings",
    "StopRule",
    "check_prompts",
    "claim_pixels",
    "interior_point",
    "mask_box",
    "mask_to_logits",
    "neighbours",
]


@dataclass(frozen=True)
class StopRule:
    """When a propagated mask no longer continues the object: the object has ended.

    min_score: predicted IoU below this stops (0 disables; the bundled model's IoU head
        is not calibrated, see issue 17, so it is off by default).
    min_stability: SAM's stability score (area above logit +1 over area above -1)
        below this stops.
    min_overlap: IoU with the previous slice's mask below this stops: the mask jumped to
        another object or grew onto the background.
    max_area_change: area ratio to the previous slice above this (or below its
        inverse) stops.
    min_area: masks smaller than this many pixels stop (the object has faded out).
    """

    min_score: float = 0.0
    min_stability: float = 0.0
    min_overlap: float = 0.5
    max_area_change: float = 1.5
    min_area: int = 4

    def why_stop(self, *, score: float, stability: float, overlap: float, area: int,
                 previous_area: int) -> str | None:  # fmt: skip
        """The reason to stop for a slice's mask with these measures, or None."""
        if area < self.min_area:
            return f"the mask is smaller than {self.min_area} pixels"
        if score < self.min_score:
            return f"predicted IoU {score:.3f} < {self.min_score}"
        if stability < self.min_stability:
            return f"stability {stability:.3f} < {self.min_stability}"
        if overlap < self.min_overlap:
            return f"overlap with the previous slice {overlap:.3f} < {self.min_overlap}"
        ratio = area / max(previous_area, 1)
        if not 1 / self.max_area_change <= ratio <= self.max_area_change:
            return f"the area changed {ratio:.2f}x"
        return None


@dataclass(frozen=True)
class PropagationSettings:
    """Which prompts carry an object to the next slice, and when it ends.

    use_mask: the previous slice's low-res logits as the mask prompt.
    use_box: the previous mask's bounding box, grown by `box_margin` of its size on
        every side (at least one pixel), as the box prompt.
    use_point: a positive point at the previous mask's most interior pixel.
    negative_points: for several objects at once, each object's interior point is a
        negative point for the others, so touching objects do not merge.
    multimask: with point prompts and no mask prompt, decode SAM's 3 candidates and
        keep the one that overlaps the previous slice's mask most.
    stop: the `StopRule`.
    """

    use_mask: bool = False
    use_box: bool = False
    use_point: bool = True
    negative_points: bool = True
    multimask: bool = True
    box_margin: float = 0.1
    stop: StopRule = field(default_factory=StopRule)

    def __post_init__(self) -> None:
        if not (self.use_mask or self.use_box or self.use_point):
            raise ValueError("Propagation needs at least one of use_mask, use_box, use_point.")
        if not 0 <= self.box_margin <= 1:
            raise ValueError(f"box_margin must be within [0, 1]; got {self.box_margin}.")


def mask_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(min_row, min_col, max_row, max_col) of a non-empty (H, W) bool mask, pixel
    centres, grown by `margin` of its height/width on each side (at least 1 pixel when
    margin > 0) and clipped to the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = np.array([rows[0], cols[0], rows[-1], cols[-1]], dtype=float)
    if margin > 0:
        grow = np.maximum(1.0, margin * (box[2:] - box[:2] + 1))
        box[:2] -= grow
        box[2:] += grow
    height, width = mask.shape
    return np.clip(box, 0, [height - 1, width - 1, height - 1, width - 1])


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the pixel of a non-empty (H, W) bool mask farthest from its edge
    (Euclidean distance transform, scipy.ndimage)."""
    from scipy import ndimage

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    distance = ndimage.distance_transform_edt(crop)
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([row - 1 + rows[0], col - 1 + cols[0]], dtype=float)


def mask_to_logits(mask: np.ndarray, input_size: tuple[int, int], grid: tuple[int, int],
                   img_size: int, magnitude: float = 8.0) -> np.ndarray:  # fmt: skip
    """An (H, W) bool mask as SAM low-res logits (grid = `mask_input_size`, e.g.
    256 x 256): resized like the image into its `input_size` corner of the padded
    `img_size` square, +magnitude inside and -magnitude outside, so that a committed
    label can be the mask prompt of the next slice."""
    import torch
    import torch.nn.functional as F

    rows = max(1, round(input_size[0] * grid[0] / img_size))
    cols = max(1, round(input_size[1] * grid[1] / img_size))
    plane = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    small = F.interpolate(plane, size=(rows, cols), mode="area")[0, 0].numpy()
    logits = np.full(grid, -magnitude, dtype=np.float32)
    logits[:rows, :cols] = (small * 2 - 1) * magnitude
    return logits


def check_prompts(points, labels, boxes, plane_shape: tuple[int, int]):
    """The prompts of K objects on a slice of `plane_shape` (H, W), as (points (K, N, 2)
    or None, labels (K, N) or None, boxes (K, 4) or None), from points (K, 2) (one per
    object) or (K, N, 2). Raises ValueError unless each object has a positive point or a
    box and every prompt lies on the slice."""
    if points is None and boxes is None:
        raise ValueError("Give the objects as points, boxes or masks.")
    height, width = plane_shape
    if points is not None:
        points = np.asarray(points, dtype=float)
        points = points[:, None] if points.ndim == 2 else points  # one point per object
        if points.ndim != 3 or points.shape[-1] != 2 or 0 in points.shape:
            raise ValueError(f"Points are (row, col) on the slice, (N, 2) for one object "
                             f"or (K, 2) one per object; got shape {points.shape}.")
        for rc in points.reshape(-1, 2):
            if not (0 <= rc[0] <= height - 1 and 0 <= rc[1] <= width - 1):
                raise ValueError(f"The point {rc.tolist()} lies outside the slice of "
                                 f"{height} x {width} pixels (row, col).")  # fmt: skip
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=float)
        if boxes.shape[-1:] != (4,) or boxes.ndim > 2:
            raise ValueError("A box is (min_row, min_col, max_row, max_col); got shape "
                             f"{boxes.shape}.")  # fmt: skip
        boxes = boxes.reshape(-1, 4)
        low, high = np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2],
                                                                         boxes[:, 2:])
        if (high < 0).any() or (low[:, 0] > height - 1).any() or (low[:, 1] > width - 1).any():
            raise ValueError(f"A box lies outside the slice of {height} x {width} pixels.")
    count = len(points) if points is not None else len(boxes)
    if points is not None and boxes is not None and len(boxes) != count:
        raise ValueError(f"Got {count} objects' points but {len(boxes)} boxes.")
    if labels is not None:
        labels = np.asarray(labels).reshape(count, -1)
        if boxes is None and not (labels == 1).any(axis=1).all():
            raise ValueError("Each object needs a positive point (label 1) or a box: "
                             "negative points alone do not say where it is.")
    return points, labels, boxes


def neighbours(masks, reach: float = 0.25) -> np.ndarray:
    """(B, B) bool: objects whose bounding boxes, grown by `reach` of their size on each
    side, intersect: each other's negative points, so touching objects do not merge
    (far ones are left out: a negative point far away only perturbs SAM's answer)."""
    boxes = np.stack([mask_box(mask, reach) for mask in masks])
    low, high = boxes[:, :2], boxes[:, 2:]
    near = ((low[:, None] <= high[None]) & (low[None] <= high[:, None])).all(axis=-1)
    np.fill_diagonal(near, False)
    return near


def claim_pixels(full: np.ndarray) -> np.ndarray:
    """(B, H, W) logits -> masks where a pixel above 0 goes to the object with the
    highest logit only, so that objects decoded together never share a pixel."""
    masks = full > 0.0
    if len(full) > 1:  # argmax: a tie goes to the first object, never to both
        masks &= np.argmax(full, axis=0)[None] == np.arange(len(full))[:, None, None]
    return masks
