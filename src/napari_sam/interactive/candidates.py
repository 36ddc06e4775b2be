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


@dataclass(frozen=True)
class Candidate:
    """One candidate mask: its name, the (H, W) bool mask, the predicted IoU, and the
    low-res logits it came from (to refine a later prediction)."""

    name: str
    mask: np.ndarray
    iou: float
    logits: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def __iter__(self):  # unpacks as (name, mask, iou)
        return iter((self.name, self.mask, self.iou))


def rank_candidates(masks, scores, logits) -> list[Candidate]:
    """Candidates ordered by area, largest first. Three masks (one ambiguous prompt) are
    named whole, part, subpart; a single mask is named "mask". Ties keep SAM's order."""
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    logits = np.asarray(logits)
    if len(masks) == 1:
        return [Candidate("mask", masks[0], float(scores[0]), logits[0])]
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    order = np.argsort(-areas, kind="stable")
    names = CANDIDATE_NAMES if len(masks) == 3 else [f"mask {i}" for i in range(len(masks))]
    return [
        Candidate(name, masks[i], float(scores[i]), logits[i])
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
