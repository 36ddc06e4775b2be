"""Simulated interactive prompting, as in SAM's training: a first point (or box) from
the object, then corrections sampled from where the current mask is wrong.

Batched in torch so that all prompts of a training step are drawn on the model's
device at once; points are (row, col) and boxes (min_row, min_col, max_row, max_col).
"""

from __future__ import annotations

import torch

NO_POINT = -1  # the prompt encoder's label for a padding point


def _uniform_pixel(masks: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One pixel of each (N, H, W) mask, uniformly at random, as (N, 2) (row, col);
    (0, 0) for an empty mask. The largest of uniform scores over the mask's pixels is
    a uniform draw among them."""
    scores = torch.rand(masks.shape, generator=generator, device=masks.device)
    index = (scores * masks).flatten(1).argmax(dim=1)
    width = masks.shape[-1]
    return torch.stack([index // width, index % width], dim=1).float()


def first_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A pixel of each object (N, H, W) -> (N, 2) (row, col), uniformly at random."""
    return _uniform_pixel(masks.bool(), generator)


def jittered_boxes(
    masks: torch.Tensor,
    generator: torch.Generator | None = None,
    jitter: float = 0.1,
    max_jitter: float = 20.0,
) -> torch.Tensor:
    """Each object's bounding box (N, 4), every corner moved by Gaussian noise of 10 % of
    the side length (at most 20 px), kept inside the image and ordered min <= max."""
    masks = masks.bool()
    height, width = masks.shape[-2:]
    rows, cols = masks.any(dim=2), masks.any(dim=1)

    def extent(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(hit.shape[1], device=hit.device).expand_as(hit)
        low = torch.where(hit, index, hit.shape[1]).amin(dim=1)
        high = torch.where(hit, index, -1).amax(dim=1)
        return low, high

    (top, bottom), (left, right) = extent(rows), extent(cols)
    box = torch.stack([top, left, bottom, right], dim=1).float()
    sides = torch.stack([bottom - top, right - left] * 2, dim=1).float() + 1
    noise = torch.randn(box.shape, generator=generator, device=box.device)
    box = box + noise * torch.clamp(jitter * sides, max=max_jitter)
    limit = torch.tensor([height, width] * 2, device=box.device, dtype=box.dtype) - 1
    box = torch.minimum(box.clamp(min=0), limit)
    return torch.cat(
        [torch.minimum(box[:, :2], box[:, 2:]), torch.maximum(box[:, :2], box[:, 2:])], 1
    )


def correction_points(
    predicted: torch.Tensor, truth: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A point from each error region: ((N, 2) (row, col), (N,) labels), positive (1)
    where the object was missed, negative (0) where the mask spills over, and `NO_POINT`
    (-1, a padding point) where the mask is already exact."""
    truth = truth.bool()
    error = predicted.bool() != truth
    points = _uniform_pixel(error, generator)
    rows, cols = points[:, 0].long(), points[:, 1].long()
    labels = truth[torch.arange(len(truth), device=truth.device), rows, cols].long()
    labels = torch.where(error.flatten(1).any(dim=1), labels, NO_POINT)
    return points, labels
