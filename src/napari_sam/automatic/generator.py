"""Segment everything: SAM's fully automatic mask generation.

A regular grid of points is laid over the image (and optionally over overlapping crops
of it); every point is decoded into its three ambiguity masks, the masks are filtered by
the model's predicted IoU and by their stability score, near-duplicates are removed by
non-maximum suppression on their boxes, and optionally small islands and holes are
removed. The results are the masks of Meta's `SamAutomaticMaskGenerator` for the same
weights and parameters, computed with less work:

- the predicted-IoU filter runs before anything is upscaled;
- areas, stability scores and boxes at the image's resolution are computed from the
  low-res decoder logits (`napari_sam.automatic.resampling`), upscaling a small object
  only inside a window around it, and a large one only at its boundary;
- only the masks that survive every filter are upscaled, once, and only inside their
  boxes: a record keeps its mask inside its box (`MaskRecord.bbox_mask`), so memory
  grows with the objects' boxes, never with objects x image pixels; the full-size
  `MaskRecord.mask` is made when asked for, and `masks_to_labels` paints box by box.

Coordinates follow the package: points are (row, col); a record's `bbox` is (min_row,
min_col, max_row, max_col) of its first and last pixels, inclusive (so it can be given
back to `SamPredictor.predict(box=...)`); `crop_box` is (min_row, min_col, max_row,
max_col) with exclusive ends, i.e. the crop is `image[r0:r1, c0:c1]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..image import to_uint8_rgb
from ..model import Sam
from ..predictor import ImageEmbedding, SamPredictor
from .grid import crop_boxes, near_crop_edge, point_grid
from .mask_ops import crop_to_box, nms, remove_small_regions
from .records import MaskRecord, inclusive_box
from .report import ScoreReport
from .resampling import Resampling, image_statistics

# The widget's defaults, for microscopy: Meta's thresholds (0.88 / 0.95, the class's
# defaults, kept for parity with SamAutomaticMaskGenerator) drop many faint or textured
# cells; slightly lower ones keep them, and specks below 16 px are removed.
MICROSCOPY_DEFAULTS = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.8,
    "stability_score_thresh": 0.9,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 16,
}


class GenerationCancelled(Exception):
    """Raised by `AutomaticMaskGenerator.generate` when its `cancelled()` returned True."""


@dataclass
class _Candidates:
    """Masks of one crop that passed the filters, kept as low-res logits."""

    logits: torch.Tensor  # (N, h, w) trimmed low-res logits
    iou: torch.Tensor  # (N,)
    stability: torch.Tensor  # (N,)
    boxes: torch.Tensor  # (N, 4) inclusive, image frame
    points: torch.Tensor  # (N, 2) (row, col), image frame

    def take(self, keep: torch.Tensor) -> _Candidates:
        keep = keep.to(self.logits.device)
        return _Candidates(*(t[keep] for t in self.fields()))

    def fields(self):
        return (self.logits, self.iou, self.stability, self.boxes, self.points)

    @classmethod
    def concat(cls, parts: Sequence[_Candidates], shape: tuple[int, int], device) -> _Candidates:
        if not parts:
            empty = torch.zeros(0, device=device)
            return cls(
                empty.reshape(0, *shape),
                empty,
                empty.double(),
                empty.reshape(0, 4).long(),
                empty.reshape(0, 2),
            )
        return cls(
            *(torch.cat(columns) for columns in zip(*(p.fields() for p in parts), strict=True))
        )


class AutomaticMaskGenerator:
    """Find every object in an image with SAM, as a list of `MaskRecord`.

    >>> generator = AutomaticMaskGenerator(model, points_per_side=32)
    >>> records = generator.generate(image)
    >>> labels = masks_to_labels(records, image.shape[:2])

    Parameters have the meaning (and defaults) of Meta's `SamAutomaticMaskGenerator`:
    points_per_side points along each side of the image (or crop) are decoded,
    `points_per_batch` at a time; masks are kept when their predicted IoU exceeds
    `pred_iou_thresh` and their stability score (IoU of the mask thresholded at
    +/- `stability_score_offset` around the mask threshold) reaches
    `stability_score_thresh` (a threshold of 0 turns a filter off); duplicates are
    removed by box NMS at `box_nms_thresh`. With `crop_n_layers` > 0 the image is also
    processed in overlapping crops (layer i has 2^i crops per side, with
    `points_per_side / crop_n_points_downscale_factor^i` points per side), masks cut by
    a crop's edge are dropped, and duplicates across crops are removed at
    `crop_nms_thresh`, preferring masks of smaller crops. `min_mask_region_area` > 0
    removes islands and fills holes smaller than that many pixels (8-connected).
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
    ) -> None:
        _require_int("points_per_side", points_per_side, 1)
        _require_int("points_per_batch", points_per_batch, 1)
        _require_int("crop_n_layers", crop_n_layers, 0)
        _require_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        _require_int("min_mask_region_area", min_mask_region_area, 0)
        for name, value in (
            ("pred_iou_thresh", pred_iou_thresh),
            ("stability_score_thresh", stability_score_thresh),
        ):
            _require_range(name, value, 0.0, 1.0, "0 turns the filter off")
        _require_range("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, "a fraction")
        for name, value in (
            ("box_nms_thresh", box_nms_thresh),
            ("crop_nms_thresh", crop_nms_thresh),
        ):
            _require_range(name, value, 0.0, 1.0, "1 keeps every box", low_open=True)
        if not (math.isfinite(stability_score_offset) and stability_score_offset > 0):
            raise ValueError(
                f"stability_score_offset must be a positive number of logits (default 1.0); "
                f"got {stability_score_offset!r}."
            )
        self.grid_sizes = [
            int(points_per_side / crop_n_points_downscale_factor**layer)
            for layer in range(crop_n_layers + 1)
        ]
        if self.grid_sizes[-1] < 1:
            raise ValueError(
                f"With points_per_side={points_per_side} and crop_n_points_downscale_factor="
                f"{crop_n_points_downscale_factor}, crop layer {crop_n_layers} would get no "
                "points: use fewer crop layers or a smaller downscale factor."
            )
        self.predictor = SamPredictor(model)
        self.model = self.predictor.model
        self.points_per_side = points_per_side
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area

    # -- public --------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        image: np.ndarray,
        *,
        embedding: ImageEmbedding | None = None,
        progress: Callable[[int, int], object] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[MaskRecord]:
        """Every object found in a 2D image ((H, W) or (H, W, 3|4), any dtype, normalised
        as by `SamPredictor.set_image`), best first. An empty list when nothing passes
        the filters.

        embedding: this model's `ImageEmbedding` of the same image (e.g. from a cache),
        to skip the encoder for the whole-image crop.
        progress(done, total) is called after each encoder run and each batch of points.
        cancelled() is asked before each of those steps; when it returns True the work
        stops and `GenerationCancelled` is raised.
        """
        rgb = to_uint8_rgb(image)
        shape = rgb.shape[:2]
        self.last_report = ScoreReport()  # what the filters saw, for an empty result
        crops = crop_boxes(shape, self.crop_n_layers, self.crop_overlap_ratio)
        self._check_grid(crops)
        if embedding is not None and tuple(embedding.original_size) != shape:
            raise ValueError(
                f"The embedding belongs to an image of shape {tuple(embedding.original_size)}, "
                f"not {shape}: pass the embedding of this image or none."
            )
        batches = [
            math.ceil(self.grid_sizes[layer] ** 2 / self.points_per_batch) for _, layer in crops
        ]
        total, done = len(crops) + sum(batches), 0

        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        def check() -> None:
            if cancelled is not None and cancelled():
                raise GenerationCancelled("Automatic mask generation was cancelled.")

        per_crop = []
        for (box, layer), n_batches in zip(crops, batches, strict=True):
            check()
            if layer == 0 and embedding is not None:
                self.predictor.image_embedding = embedding
            else:
                self.predictor.set_image(rgb[box[0] : box[2], box[1] : box[3]])
            crop_embedding = self.predictor.image_embedding
            self.predictor.reset_image()
            step()
            points = point_grid(self.grid_sizes[layer])
            parts = []
            for index in range(n_batches):
                check()
                chunk = points[index * self.points_per_batch : (index + 1) * self.points_per_batch]
                parts.append(self._process_batch(chunk, crop_embedding, box, shape))
                step()
            resampling = self._resampling(crop_embedding)
            low_shape = (resampling.rows.n_low, resampling.cols.n_low)
            candidates = _Candidates.concat(parts, low_shape, self.model.device)
            candidates = candidates.take(
                nms(candidates.boxes, candidates.iou, self.box_nms_thresh)
            )
            per_crop.append((box, crop_embedding, candidates))

        if len(crops) > 1:
            boxes = torch.cat([c.boxes.cpu() for _, _, c in per_crop])
            scores = torch.cat(
                [
                    torch.full((len(c.iou),), 1.0 / ((b[2] - b[0]) * (b[3] - b[1])))
                    for b, _, c in per_crop
                ]
            )
            keep = nms(boxes, scores, self.crop_nms_thresh)
            owner = torch.cat(
                [torch.full((len(c.iou),), i) for i, (_, _, c) in enumerate(per_crop)]
            )
            offsets = np.cumsum([0] + [len(c.iou) for _, _, c in per_crop])
            order = [(int(owner[k]), int(k) - offsets[int(owner[k])]) for k in keep]
        else:
            order = [(0, i) for i in range(len(per_crop[0][2].iou))]

        records = self._records(per_crop, order, shape)
        if self.min_mask_region_area > 0:
            records = self._remove_small_regions(records)
        return records

    # -- steps ---------------------------------------------------------------------
    def _check_grid(self, crops) -> None:
        for box, layer in crops:
            height, width = box[2] - box[0], box[3] - box[1]
            per_side = self.grid_sizes[layer]
            if per_side > min(height, width):
                where = "the image" if layer == 0 else f"the crops of layer {layer}"
                raise ValueError(
                    f"A grid of {per_side} x {per_side} points is denser than {where} "
                    f"({height} x {width} pixels): use points_per_side <= {min(height, width)}"
                    + ("." if layer == 0 else " or a larger crop_n_points_downscale_factor.")
                )

    def _resampling(self, embedding: ImageEmbedding) -> Resampling:
        key = (tuple(embedding.input_size), tuple(embedding.original_size))
        cache = self.__dict__.setdefault("_resampling_cache", {})
        if key not in cache:
            low_res = self.model.prompt_encoder.mask_input_size
            cache[key] = Resampling.for_model(
                low_res, self.model.img_size, *key, device=self.model.device
            )
        return cache[key]

    def _process_batch(
        self,
        unit_points: np.ndarray,
        embedding: ImageEmbedding,
        crop: tuple[int, int, int, int],
        image_shape: tuple[int, int],
    ) -> _Candidates:
        device = self.model.device
        (crop_h, crop_w), (in_h, in_w) = embedding.original_size, embedding.input_size
        rows_cols = unit_points * np.array([crop_h, crop_w])
        xy = (rows_cols[:, ::-1] * np.array([in_w / crop_w, in_h / crop_h])).astype(np.float32)
        coords = torch.as_tensor(xy, device=device)[:, None]
        labels = torch.ones(len(xy), 1, dtype=torch.int64, device=device)
        # Masks only for points with an output that can pass the IoU filter.
        min_iou = self.pred_iou_thresh if self.pred_iou_thresh > 0 else -float("inf")
        iou, rows, low = self.model.decode_iou_first(
            embedding.features, (coords, labels), None, None, True, min_iou
        )
        all_iou = iou.float()
        per_point = low.shape[1]
        low, iou = low.flatten(0, 1).float(), iou[rows].flatten(0, 1).float()
        point_index = rows.repeat_interleave(per_point)

        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.pred_iou_thresh > 0:
            keep = iou > self.pred_iou_thresh
        low, iou, point_index = low[keep], iou[keep], point_index[keep]

        resampling = self._resampling(embedding)
        threshold, offset = self.model.mask_threshold, self.stability_score_offset
        levels = (threshold - offset, threshold, threshold + offset)
        counts, boxes = image_statistics(low, resampling, levels, threshold)
        stability = counts[:, 2].double() / counts[:, 0].double()
        self.last_report.add(all_iou.cpu().numpy(), stability.cpu().numpy())
        keep = torch.ones_like(iou, dtype=torch.bool)
        if self.stability_score_thresh > 0:
            keep = stability >= self.stability_score_thresh
        boxes = boxes + torch.tensor([crop[0], crop[1], crop[0], crop[1]], device=device)
        keep &= ~near_crop_edge(boxes, crop, image_shape)
        offset_rc = torch.tensor([crop[0], crop[1]], dtype=torch.float32, device=device)
        points = torch.as_tensor(rows_cols, dtype=torch.float32, device=device) + offset_rc
        return _Candidates(
            low[keep][:, : resampling.rows.n_low, : resampling.cols.n_low].contiguous(),
            iou[keep],
            stability[keep],
            boxes[keep],
            points[point_index[keep]],
        )

    def _records(self, per_crop, order, shape) -> list[MaskRecord]:
        """Each kept candidate upscaled inside its box (grown by a pixel, against float
        rounding at the box's edge), never at full size."""
        records = []
        for crop_index, i in order:
            box, embedding, candidates = per_crop[crop_index]
            resampling = self._resampling(embedding)
            height, width = resampling.shape
            r0, c0, r1, c1 = (candidates.boxes[i].cpu() - torch.tensor(box[:2]).repeat(2)).tolist()
            window = (max(r0 - 1, 0), max(c0 - 1, 0), min(r1 + 2, height), min(c1 + 2, width))
            logits = resampling.upscale(candidates.logits[i][None], window)[0]
            inside, (top, left) = crop_to_box((logits > self.model.mask_threshold).cpu().numpy())
            area = int(inside.sum())
            origin = (box[0] + window[0] + top, box[1] + window[1] + left) if area else (0, 0)
            records.append(
                MaskRecord(
                    bbox_mask=inside,
                    area=area,
                    bbox=inclusive_box(inside, origin),
                    predicted_iou=float(candidates.iou[i]),
                    stability_score=float(candidates.stability[i]),
                    point=tuple(float(v) for v in candidates.points[i].tolist()),
                    crop_box=tuple(int(v) for v in box),
                    image_shape=tuple(shape),
                )
            )
        return records

    def _remove_small_regions(self, records: list[MaskRecord]) -> list[MaskRecord]:
        """Fill small holes, drop small islands, then NMS again preferring unchanged
        masks; each mask is cleaned inside its box."""
        if not records:
            return records
        cleaned = [
            remove_small_regions(r.bbox_mask, r.bbox[:2], r.image_shape, self.min_mask_region_area)
            for r in records
        ]
        boxes = torch.tensor([inclusive_box(m, o) for m, o, _ in cleaned], dtype=torch.float32)
        unchanged = torch.tensor([not changed for _, _, changed in cleaned], dtype=torch.float32)
        keep = nms(boxes, unchanged, max(self.box_nms_thresh, self.crop_nms_thresh))
        result = []
        for k in keep.tolist():
            record, (inside, origin, changed) = records[k], cleaned[k]
            if changed:
                bbox = inclusive_box(inside, origin)
                record = replace(record, bbox_mask=inside, area=int(inside.sum()), bbox=bbox)
            result.append(record)
        return result


# -- helpers ---------------------------------------------------------------------------
def _require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def _require_range(
    name: str, value, low: float, high: float, hint: str, low_open: bool = False
) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}] ({hint}); got {value!r}.")


__all__ = ["MICROSCOPY_DEFAULTS", "AutomaticMaskGenerator", "GenerationCancelled"]
