"""Quality of a model on labelled images, measured the way a user meets it: one click,
the candidate with the highest predicted IoU."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model import Sam
from ..predictor import ImageEmbedding, SamPredictor
from ..tiled import TiledPredictor
from .data import LabelledImage
from .prompting import first_points


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class Click:
    """One evaluation click: the item it is on, the (row, col) pixel, and the true masks
    holding that pixel (whole to subpart; each is a correct reading)."""

    item: int
    point: tuple[float, float]
    readings: list[np.ndarray]


def draw_clicks(
    items: Sequence[LabelledImage], clicks_per_image: int = 5, seed: int = 0, min_area: int = 16
) -> list[Click]:
    """Clicks at random pixels of up to `clicks_per_image` random objects (of at least
    `min_area` pixels) of the first level of each item, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    clicks = []
    for index, item in enumerate(items):
        whole = item.levels[0]
        ids, areas = np.unique(whole, return_counts=True)
        ids = ids[(ids != 0) & (areas >= min_area)]
        if len(ids) == 0:
            continue
        for object_id in rng.choice(ids, size=min(clicks_per_image, len(ids)), replace=False):
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            point = first_points(torch.from_numpy(whole == object_id)[None], generator)[0]
            row, col = (int(v) for v in point.tolist())
            readings = [lv == lv[row, col] for lv in item.levels if lv[row, col]]
            clicks.append(Click(index, (row, col), readings))
    return clicks


@dataclass
class ClickScores:
    """What each click gave, as a user meets it and as an oracle would: (n,) arrays of
    the preselected (highest predicted IoU) candidate's IoU against the best-matching
    true reading, the best of the three candidates' IoU, and the preselected mask's
    area over that reading's area; (n, 3) arrays of every candidate's predicted IoU and
    true IoU (against its own best-matching reading)."""

    preselected: np.ndarray
    best: np.ndarray
    area_ratio: np.ndarray
    predicted: np.ndarray
    true: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means: "preselected" and "best" mIoU, "preselected_is_best" (share of clicks
        where the preselection scores as well as the best candidate), "calibration_mae"
        (mean |predicted - true IoU| over all candidates), "area_ratio" (median
        preselected / true area: above 1 over-segments)."""
        if not len(self.preselected):
            return dict.fromkeys(
                ("preselected", "best", "preselected_is_best", "calibration_mae", "area_ratio"),
                float("nan"),
            )
        return {
            "preselected": float(self.preselected.mean()),
            "best": float(self.best.mean()),
            "preselected_is_best": float((self.preselected >= self.best - 1e-9).mean()),
            "calibration_mae": float(np.abs(self.predicted - self.true).mean()),
            "area_ratio": float(np.median(self.area_ratio)),
        }


def click_scores(
    model: Sam,
    items: Sequence[LabelledImage],
    clicks: Sequence[Click],
    embeddings: dict[int, ImageEmbedding] | None = None,
    tiled: bool | int = False,
) -> ClickScores:
    """Every click's candidates scored against the true readings of its pixel.
    `embeddings`: item index -> embedding, reused where present and filled where missing
    (valid only while the image encoder does not change). `tiled`: each click decoded in
    a tile of the image (`napari_sam.tiled.TiledPredictor`): True, tiles of the model's
    input size (the image's own resolution); a number, tiles of that side in pixels."""
    if tiled:
        side = None if tiled is True else int(tiled)
        predictor = TiledPredictor(model, tile=side)
    else:
        predictor = SamPredictor(model)
    rows = []
    for index, group in itertools.groupby(clicks, key=lambda click: click.item):
        if tiled:
            predictor.set_image(items[index].image)
        elif embeddings is not None and index in embeddings:
            predictor.image_embedding = embeddings[index]
        else:
            predictor.set_image(items[index].image)
            if embeddings is not None:
                embeddings[index] = predictor.image_embedding
        for click in group:
            masks, predicted_iou, _ = predictor.predict(points=[click.point])
            true = np.array([[_iou(m, t) for t in click.readings] for m in masks])  # (3, R)
            top = int(np.argmax(predicted_iou))
            matched = click.readings[int(np.argmax(true[top]))]
            ratio = masks[top].sum() / max(int(matched.sum()), 1)
            rows.append((true[top].max(), true.max(), ratio, predicted_iou, true.max(1)))
    if not rows:
        empty = np.zeros(0)
        return ClickScores(empty, empty, empty, empty.reshape(0, 3), empty.reshape(0, 3))
    columns = list(zip(*rows, strict=True))
    return ClickScores(*(np.array(c, np.float64) for c in columns))


def clicks_iou(
    model: Sam,
    items: Sequence[LabelledImage],
    clicks: Sequence[Click],
    embeddings: dict[int, ImageEmbedding] | None = None,
) -> float:
    """Mean IoU of the top-ranked candidate of each click against the best-matching true
    mask; nan without clicks. `embeddings` as in `click_scores`."""
    return click_scores(model, items, clicks, embeddings).summary()["preselected"]


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
    return clicks_iou(model, items, draw_clicks(items, clicks_per_image, seed, min_area))


class HeldOutScore:
    """Single-click IoU on fixed objects, measured again and again as a model trains:
    the clicks are drawn once, and with `frozen_encoder` the images are embedded once.

    Call it for the model's current mean IoU (nan when there is nothing to click on)."""

    def __init__(
        self, model: Sam, items: Sequence[LabelledImage], seed: int, frozen_encoder: bool
    ) -> None:
        self.model, self.items = model, list(items)
        # One click on every object (each image has at most this many).
        most = max((int(np.count_nonzero(np.unique(it.levels[0]))) for it in items), default=0)
        self.clicks = draw_clicks(self.items, most, seed)
        self._embeddings: dict[int, ImageEmbedding] | None = {} if frozen_encoder else None

    def __call__(self) -> float:
        if not self.clicks:
            return float("nan")
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return clicks_iou(self.model, self.items, self.clicks, self._embeddings)
        finally:
            self.model.train(training)


class BestWeights:
    """The weights with the best score so far among `parameters` (those a run trains:
    cheap for decoder-only), copied to the CPU when an `offer` beats every earlier one;
    `restore` puts them back into the model."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        self.parameters = parameters
        self.step, self.iou = 0, float("nan")
        self.state: dict[str, torch.Tensor] = {}
        self.evaluations: list[tuple[int, float]] = []

    def offer(self, step: int, iou: float) -> None:
        self.evaluations.append((step, iou))
        # Ties keep the earlier weights; nan (no score) beats nothing but nan.
        if not self.state or iou > self.iou or (math.isnan(self.iou) and not math.isnan(iou)):
            self.step, self.iou = step, iou
            self.state = {n: p.detach().to("cpu", copy=True) for n, p in self.parameters.items()}

    def restore(self) -> None:
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(self.state[name])


def matched_ious(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every (true object, predicted object) pair that overlaps, as a
    (n_true, n_predicted) array (ids in order of `np.unique`, background excluded)."""
    true_ids, true_index = np.unique(truth, return_inverse=True)
    pred_ids, pred_index = np.unique(predicted, return_inverse=True)
    pairs = np.zeros((len(true_ids), len(pred_ids)), np.int64)
    np.add.at(pairs, (true_index.ravel(), pred_index.ravel()), 1)
    union = pairs.sum(1, keepdims=True) + pairs.sum(0, keepdims=True) - pairs
    iou = pairs / np.maximum(union, 1)
    keep_true, keep_pred = true_ids != 0, pred_ids != 0
    return iou[keep_true][:, keep_pred]


def instance_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Instance segmentation quality of one label image against the truth (both (H, W)
    ints, 0 background): "f1" at IoU 0.5 (2TP / (2TP + FP + FN)) and "msa", the mean
    segmentation accuracy TP / (TP + FP + FN) over IoU thresholds 0.5, 0.55, ..., 0.95
    (Caicedo et al., Nature Methods 2019). Above 0.5 a match is unique, so pairs are
    counted directly. Two empty images score 1."""
    iou = matched_ious(np.asarray(predicted), np.asarray(truth))
    n_true, n_pred = iou.shape
    if n_true == n_pred == 0:
        return {"f1": 1.0, "msa": 1.0}
    accuracies, f1 = [], 0.0
    for threshold in np.round(np.arange(0.5, 0.96, 0.05), 2):
        tp = int(np.count_nonzero(iou > threshold if threshold == 0.5 else iou >= threshold))
        fp, fn = n_pred - tp, n_true - tp
        accuracies.append(tp / (tp + fp + fn))
        if threshold == 0.5:
            f1 = 2 * tp / (2 * tp + fp + fn)
    return {"f1": f1, "msa": float(np.mean(accuracies))}
