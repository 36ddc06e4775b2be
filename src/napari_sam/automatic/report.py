"""What the grid generator's filters saw: the predicted IoU of every candidate and the
stability of those that passed the IoU filter, so that an empty result can say which
filter removed everything and what threshold would let objects through.

>>> records = generator.generate(image)
>>> if not records:
...     print(generator.last_report.why_empty(generator.pred_iou_thresh,
...                                           generator.stability_score_thresh))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ScoreReport"]


@dataclass
class ScoreReport:
    """Scores seen in one `generate` call (float32 arrays, one entry per candidate)."""

    predicted_iou: list[np.ndarray] = field(default_factory=list)
    stability: list[np.ndarray] = field(default_factory=list)  # of those past the IoU filter

    def add(self, predicted_iou, stability) -> None:
        self.predicted_iou.append(np.asarray(predicted_iou, np.float32).ravel())
        self.stability.append(np.asarray(stability, np.float32).ravel())

    def extend(self, other: ScoreReport) -> None:
        """Add the scores another report saw (e.g. another slice's)."""
        self.predicted_iou += other.predicted_iou
        self.stability += other.stability

    def why_empty(self, pred_iou_thresh: float, stability_score_thresh: float) -> str:
        """Why no mask passed, with the scores seen and a threshold that would pass
        the best tenth of the candidates."""
        ious = np.concatenate(self.predicted_iou) if self.predicted_iou else np.zeros(0)
        stabilities = np.concatenate(self.stability) if self.stability else np.zeros(0)
        if not len(ious):
            return "No candidate masks were decoded (the image may be empty)."
        if not (ious > pred_iou_thresh).any():
            low, mid, high = np.percentile(ious, [10, 50, 90])
            return (
                f"No mask passed the predicted-IoU filter (> {pred_iou_thresh:g}): this model "
                f"predicted IoU {ious.min():.2f}-{ious.max():.2f} (median {mid:.2f}, 10-90 % "
                f"{low:.2f}-{high:.2f}). Lower pred_iou_thresh, e.g. to {high:.2f}, to keep "
                "the best tenth."
            )
        if len(stabilities) and not (stabilities >= stability_score_thresh).any():
            high = np.percentile(stabilities, 90)
            return (
                f"No mask passed the stability filter (>= {stability_score_thresh:g}): "
                f"stability {stabilities.min():.2f}-{stabilities.max():.2f} among the masks "
                f"past the IoU filter. Lower stability_score_thresh, e.g. to {high:.2f}."
            )
        return (
            "Masks passed the score filters but none survived the rest (crop edges, "
            "small-region removal): lower min_mask_region_area or check the image."
        )
