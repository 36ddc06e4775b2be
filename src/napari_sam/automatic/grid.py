"""Where segment everything puts its point prompts: the crops of the image and the
regular grid of points laid over each, and which masks a crop's edge cut.

Crop boxes are (min_row, min_col, max_row, max_col) with exclusive ends (the crop is
`image[r0:r1, c0:c1]`); grid points are (row, col) in [0, 1] of the crop.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["crop_boxes", "near_crop_edge", "point_grid"]


def crop_boxes(
    shape: tuple[int, int], n_layers: int, overlap_ratio: float
) -> list[tuple[tuple[int, int, int, int], int]]:
    """The whole image, then for layer i = 1..n_layers a (2^i x 2^i) grid of crops that
    overlap by `overlap_ratio` of the shorter side (scaled down with the layer), as
    ((min_row, min_col, max_row, max_col) exclusive, layer) in the reference's order."""
    height, width = shape
    boxes = [((0, 0, height, width), 0)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * 2 / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        col_starts = [int((crop_w - overlap) * i) for i in range(per_side)]
        row_starts = [int((crop_h - overlap) * i) for i in range(per_side)]
        for c0 in col_starts:
            for r0 in row_starts:
                box = (r0, c0, min(r0 + crop_h, height), min(c0 + crop_w, width))
                boxes.append((box, layer))
    return boxes


def point_grid(per_side: int) -> np.ndarray:
    """(per_side^2, 2) cell centres of a regular grid over [0, 1]^2 as (row, col), row by row."""
    centres = np.linspace(0.5 / per_side, 1 - 0.5 / per_side, per_side)
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def near_crop_edge(
    boxes: torch.Tensor, crop: tuple[int, int, int, int], shape: tuple[int, int], tol: float = 20.0
) -> torch.Tensor:
    """Boxes (image frame) within `tol` of an edge of the crop that is not an image edge."""
    crop_t = torch.tensor(crop, dtype=torch.float32, device=boxes.device)
    image_t = torch.tensor((0, 0, *shape), dtype=torch.float32, device=boxes.device)
    boxes = boxes.float()
    near_crop = (boxes - crop_t).abs() <= tol
    near_image = (boxes - image_t).abs() <= tol
    return (near_crop & ~near_image).any(1)
