"""Helpers for interactive segmentation on top of `SamPredictor` (numpy in/out, no napari).

- `rank_candidates`: SAM's three answers to one click, named whole / part / subpart by
  area, with the predicted IoU; the one with the highest predicted IoU is preselected.
- `prompts_grew`: whether a new prompt set only added to the previous one, the case in
  which the previous low-res logits may refine the next prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CANDIDATE_NAMES",
    "Candidate",
    "PromptSet",
    "best_index",
    "prompts_grew",
    "rank_candidates",
]

CANDIDATE_NAMES = ("whole", "part", "subpart")


class Candidate:
    """One candidate mask: its name, the (H, W) bool mask, the predicted IoU, and the
    low-res logits it came from (to refine a later prediction), which belong to `tile`,
    the (min_row, min_col, max_row, max_col) part of the view it was decoded in (None:
    the whole view). `mask` may be given as a function that makes it: it is then made
    on first access (most candidates are never shown, and upscaling is a large part of
    a click)."""

    __slots__ = ("_make_mask", "_mask", "iou", "logits", "name", "tile")

    def __init__(self, name: str, mask, iou: float, logits: np.ndarray, tile=None) -> None:
        self.name, self.iou, self.logits, self.tile = name, float(iou), logits, tile
        self._make_mask = mask if callable(mask) else None
        self._mask = None if callable(mask) else np.asarray(mask, dtype=bool)

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = np.asarray(self._make_mask(), dtype=bool)
        return self._mask

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def __iter__(self):  # unpacks as (name, mask, iou)
        return iter((self.name, self.mask, self.iou))

    def __repr__(self) -> str:
        return f"Candidate({self.name!r}, iou={self.iou:.3f})"


def rank_candidates(masks, scores, logits, areas=None, tile=None) -> list[Candidate]:
    """Candidates ordered by area, largest first. Three masks (one ambiguous prompt) are
    named whole, part, subpart; a single mask is named "mask". Ties keep SAM's order.

    `masks`: (M, H, W) bool, or M functions making them (see `Candidate`); `areas`: (M,)
    areas to order by (default: the masks' pixel counts); `tile`: where they were
    decoded (see `Candidate`)."""
    scores = np.asarray(scores, dtype=float)
    logits = np.asarray(logits)
    if not callable(masks[0]):
        masks = np.asarray(masks, dtype=bool)
    if len(masks) == 1:
        return [Candidate("mask", masks[0], float(scores[0]), logits[0], tile)]
    if areas is None:
        areas = np.asarray(masks).reshape(len(masks), -1).sum(axis=1)
    order = np.argsort(-np.asarray(areas), kind="stable")
    names = CANDIDATE_NAMES if len(masks) == 3 else [f"mask {i}" for i in range(len(masks))]
    return [
        Candidate(name, masks[i], float(scores[i]), logits[i], tile)
        for name, i in zip(names, order, strict=True)
    ]


def best_index(candidates: list[Candidate]) -> int:
    """Index of the candidate with the highest predicted IoU (first of equals)."""
    return int(np.argmax([c.iou for c in candidates])) if candidates else -1


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one prediction, hashable and comparable."""

    points: tuple[tuple[float, float, int], ...] = ()
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def from_arrays(cls, coords, labels, box=None) -> PromptSet:
        coords = np.asarray(coords, dtype=float).reshape(-1, 2)
        labels = np.asarray(labels, dtype=int).reshape(-1)
        points = tuple(
            (float(r), float(c), int(lab)) for (r, c), lab in zip(coords, labels, strict=True)
        )
        return cls(points, None if box is None else tuple(float(v) for v in box))

    def __bool__(self) -> bool:
        return bool(self.points) or self.box is not None


def prompts_grew(old: PromptSet | None, new: PromptSet) -> bool:
    """True when `new` holds every prompt of `old` unchanged, plus at least one point."""
    if old is None or not old:
        return False
    return (
        old.box == new.box
        and len(new.points) > len(old.points)
        and new.points[: len(old.points)] == old.points
    )
