"""Helpers for interactive segmentation on top of `SamPredictor` (numpy in/out, no napari).

- `rank_candidates`: SAM's three answers to one click, named whole / part / subpart by
  area, with the predicted IoU; the one with the highest predicted IoU is preselected.
- `prompts_grew`: whether a new prompt set only added to the previous one, the case in
  which the previous low-res logits may refine the next prediction.
- `predict_boxes`: one mask per box, all boxes in one decoder batch ("one object per box").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CANDIDATE_NAMES",
    "Candidate",
    "EncodingCancelled",
    "PromptSet",
    "best_index",
    "encode_steps",
    "predict_boxes",
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


class EncodingCancelled(Exception):
    """Raised by `encode_steps` when its `cancelled()` callback returns True."""


def encode_steps(model, image, cancelled=None):
    """Embed one 2D image block by block: a generator that yields (done, total) after
    every encoder block and returns the `ImageEmbedding` (as StopIteration.value).

    The same result as `SamPredictor.set_image`, but a worker thread can report progress
    and stop between blocks: when `cancelled()` returns True, `EncodingCancelled` is
    raised. Models whose encoder is not a block sequence are encoded in one step.
    """
    import torch

    from .image import resize_longest_side, to_uint8_rgb
    from .predictor import ImageEmbedding

    rgb = to_uint8_rgb(image)
    resized = resize_longest_side(rgb, model.img_size)
    encoder = model.image_encoder
    blocks = getattr(encoder, "blocks", None)
    stepwise = all(hasattr(encoder, name) for name in ("patch_embed", "pos_embed", "neck"))
    total = len(blocks) + 1 if (stepwise and blocks is not None) else 1

    def check() -> None:
        if cancelled is not None and cancelled():
            raise EncodingCancelled("Encoding was cancelled.")

    with torch.inference_mode():
        pixels = torch.tensor(resized).permute(2, 0, 1)[None].to(model.device)
        if total == 1:
            features = model.encode_image(pixels)
        else:
            dtype = encoder.patch_embed.proj.weight.dtype
            x = encoder.patch_embed(model.preprocess(pixels).to(dtype)) + encoder.pos_embed
            for done, block in enumerate(blocks, start=1):
                check()
                x = block(x)
                yield done, total
            check()
            features = encoder.neck(x.permute(0, 3, 1, 2)).float()
    yield total, total
    return ImageEmbedding(features, rgb.shape[:2], resized.shape[:2])


def predict_boxes(predictor, boxes) -> tuple[np.ndarray, np.ndarray]:
    """One mask per box, decoded as one batch: (masks (B, H, W) bool, scores (B,)).

    `predictor` is a `SamPredictor` with an image set; `boxes` (B, 4) as
    (min_row, min_col, max_row, max_col) in pixels of that image.
    """
    import torch

    embedding = predictor.image_embedding
    if embedding is None:
        raise RuntimeError("No image is set: call set_image(image) before predict_boxes().")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = embedding.original_size
    if len(boxes) == 0:
        return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite values.")
    corners = boxes.reshape(-1, 2, 2)
    corners = np.stack([corners.min(axis=1), corners.max(axis=1)], axis=1)
    in_h, in_w = embedding.input_size
    xy = corners[..., ::-1] * np.array([in_w / width, in_h / height])
    model = predictor.model
    with torch.inference_mode():
        box_t = torch.as_tensor(xy.reshape(-1, 4), dtype=torch.float32, device=model.device)
        low_res, iou = model.decode(embedding.features, None, box_t, None, False)
        logits = model.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        masks = logits[:, 0] > model.mask_threshold
    return masks.cpu().numpy(), iou[:, 0].float().cpu().numpy()
