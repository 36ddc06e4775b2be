"""Quality of a model on labelled images, measured the way a user meets it: one click,
the candidate with the highest predicted IoU."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..model import Sam
from ..predictor import SamPredictor
from .data import LabelledImage
from .prompting import first_points


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def single_click_iou(
    model: Sam,
    items: Sequence[LabelledImage],
    clicks_per_image: int = 5,
    seed: int = 0,
    min_area: int = 16,
) -> float:
    """Mean IoU of the top-ranked candidate for clicks at random pixels of random objects
    of the first (whole) level. Where the click also lies in finer levels (a nucleus,
    a nucleolus), each of those objects is a correct reading too: the best match counts.
    """
    rng = np.random.default_rng(seed)
    predictor = SamPredictor(model)
    scores = []
    for item in items:
        whole = item.levels[0]
        ids, areas = np.unique(whole, return_counts=True)
        ids = ids[(ids != 0) & (areas >= min_area)]
        if len(ids) == 0:
            continue
        predictor.set_image(item.image)
        for object_id in rng.choice(ids, size=min(clicks_per_image, len(ids)), replace=False):
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            point = first_points(torch.from_numpy(whole == object_id)[None], generator)[0]
            row, col = point.tolist()
            masks, predicted_iou, _ = predictor.predict(points=[[row, col]])
            best = masks[np.argmax(predicted_iou)]
            readings = [
                lv == lv[int(row), int(col)] for lv in item.levels if lv[int(row), int(col)]
            ]
            scores.append(max(_iou(best, truth) for truth in readings))
    return float(np.mean(scores)) if scores else float("nan")
