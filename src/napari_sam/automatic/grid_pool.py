"""The grid method decoded once, filtered many times: every candidate mask of an image
with its scores, so that new thresholds give new labels in milliseconds.

>>> pool = GridCandidates.decode(model, image, points_per_side=32)   # seconds, once
>>> records = pool.records(pred_iou_thresh=0.6, stability_score_thresh=0.8)  # fast

The pool holds what `AutomaticMaskGenerator` makes with its filters off (every
candidate's mask inside its box), and filtering repeats the generator's own steps on
it: predicted IoU and stability thresholds, box NMS best-IoU-first, small-region
removal. The result equals a direct `generate` with those filters (one crop layer;
with crops, the cross-crop NMS needs the whole run again).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .generator import AutomaticMaskGenerator
from .mask_ops import nms
from .records import MaskRecord
from .report import ScoreReport

__all__ = ["DECODE_PARAMS", "FILTER_PARAMS", "GridCandidates"]

# What the decoding depends on (changing one means decoding again) ...
DECODE_PARAMS = ("points_per_side", "points_per_batch", "stability_score_offset")
# ... and what only filters the decoded candidates.
FILTER_PARAMS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "min_mask_region_area",
)
_ALL_PASS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
             "min_mask_region_area": 0}  # fmt: skip


class GridCandidates:
    """Every candidate of one image's grid (see module docstring). Build with `decode`."""

    def __init__(
        self, model, candidates: list[MaskRecord], report: ScoreReport, decode_params: dict
    ) -> None:
        self.model = model
        self.candidates = candidates  # best predicted IoU first, as the generator orders
        self.report = report
        self.decode_params = dict(decode_params)
        self._boxes = torch.tensor([r.bbox for r in candidates], dtype=torch.float32)
        self._iou = np.array([r.predicted_iou for r in candidates], np.float32)
        self._stability = np.array([r.stability_score for r in candidates], np.float64)

    @classmethod
    def decode(
        cls,
        model,
        image: np.ndarray,
        *,
        embedding=None,
        progress: Callable[[int, int], object] | None = None,
        cancelled: Callable[[], bool] | None = None,
        **decode_params,
    ) -> GridCandidates:
        """Decode the grid on a 2D image (as `AutomaticMaskGenerator.generate`, with
        `embedding`, `progress`, `cancelled`); `decode_params` are those of
        `DECODE_PARAMS`. Raises ValueError for others (filters are given to `records`)."""
        unknown = sorted(set(decode_params) - set(DECODE_PARAMS))
        if unknown:
            raise ValueError(
                f"{unknown} are not decoding parameters of the grid ({list(DECODE_PARAMS)}); "
                f"its filters ({list(FILTER_PARAMS)}) are given to labels() / records()."
            )
        generator = AutomaticMaskGenerator(model, **decode_params, **_ALL_PASS)
        records = generator.generate(
            image, embedding=embedding, progress=progress, cancelled=cancelled
        )
        return cls(model, records, generator.last_report, decode_params)

    def records(self, **filters) -> list[MaskRecord]:
        """The records a direct `generate` with these filters (`FILTER_PARAMS`; the others
        as decoded) returns, best first. Raises ValueError for bad or unknown filters."""
        unknown = sorted(set(filters) - set(FILTER_PARAMS))
        if unknown:
            raise ValueError(
                f"{unknown} change the decoding, not the filters: decode again with them."
            )
        # The generator validates the values (and owns small-region removal).
        generator = AutomaticMaskGenerator(self.model, **self.decode_params, **filters)
        passed = np.ones(len(self.candidates), dtype=bool)
        if generator.pred_iou_thresh > 0:
            passed &= self._iou > generator.pred_iou_thresh
        if generator.stability_score_thresh > 0:
            passed &= self._stability >= generator.stability_score_thresh
        index = np.flatnonzero(passed)
        if not len(index):
            return []
        keep = nms(self._boxes[index], torch.from_numpy(self._iou[index]),
                   generator.box_nms_thresh)  # fmt: skip
        records = [self.candidates[i] for i in index[keep.numpy()]]
        if generator.min_mask_region_area > 0:
            records = generator._remove_small_regions(records)
        return records

    def why_empty(self, **filters) -> str:
        """Why `records(**filters)` is empty, with the scores seen (`ScoreReport`)."""
        generator = AutomaticMaskGenerator(self.model, **self.decode_params, **filters)
        threshold = generator.pred_iou_thresh
        # Decoded with the filters off, the report has every candidate's stability; a
        # direct run sees only those past the IoU filter: the same diagnosis from both.
        ious = np.concatenate(self.report.predicted_iou) if self.report.predicted_iou else []
        stability = np.concatenate(self.report.stability) if self.report.stability else []
        seen = ScoreReport()
        if len(ious):
            seen.add(ious, stability[ious > threshold] if threshold > 0 else stability)
        return seen.why_empty(threshold, generator.stability_score_thresh)

    @property
    def nbytes(self) -> int:
        """Memory held by the candidates' masks (bytes)."""
        return sum(r.bbox_mask.nbytes for r in self.candidates)
