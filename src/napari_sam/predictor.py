"""`SamPredictor`: embed one 2D image once, then turn prompts into masks in milliseconds.

Coordinates follow numpy and napari: a point is (row, col) in pixels of the image given
to `set_image`, integer values naming pixel centres; a box is (min_row, min_col,
max_row, max_col). Points outside the image are passed to the model as they are (it
encodes any position; such points simply carry little meaning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ._allocator import keep_freed_memory_for_reuse
from .image import resize_longest_side, resized_shape, to_uint8_rgb
from .model import Sam


@dataclass(frozen=True)
class ImageEmbedding:
    """The image encoder's output for one 2D image, with the sizes it belongs to."""

    features: torch.Tensor  # (1, C, h, w), float32, on the model's device
    original_size: tuple[int, int]  # (H, W) of the image given to set_image
    input_size: tuple[int, int]  # (h, w) after resizing, before padding

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


class Prediction(NamedTuple):
    """What `SamPredictor.predict` returns; unpacks as (masks, scores, low_res_logits)."""

    masks: np.ndarray  # (M, H, W) bool
    scores: np.ndarray  # (M,) predicted IoU
    # (M, h, w) float32, (h, w) = model.prompt_encoder.mask_input_size: 4x the embedding
    # grid, 256 x 256 for Meta's models, 128 x 128 for tiny_cells; feed one back as
    # mask_input to refine.
    low_res_logits: np.ndarray


class SamPredictor:
    """Segment one image with SAM from point, box and mask prompts.

    >>> predictor = SamPredictor(model)
    >>> predictor.set_image(image)                   # runs the image encoder once
    >>> masks, scores, logits = predictor.predict(points=[[120, 80]])
    """

    def __init__(self, model: Sam) -> None:
        self.model = model.eval()
        self._embedding: ImageEmbedding | None = None
        keep_freed_memory_for_reuse()  # a click's temporaries would page-fault anew

    # -- image ---------------------------------------------------------------------
    def set_image(
        self, image: np.ndarray, on_block: Callable[[int, int], None] | None = None
    ) -> None:
        """Embed an (H, W), (H, W, 3) or (H, W, 4) image of any dtype.

        Non-uint8 data is scaled to uint8 by robust percentiles (see `napari_sam.image`),
        then the longest side is resized to the model's input size and padded.
        `on_block(done, total)` reports progress after each encoder block; an exception
        raised from it stops the encoder and leaves no image set.
        """
        self._embedding = None
        self._embedding = embed_image(self.model, image, on_block)

    @property
    def image_embedding(self) -> ImageEmbedding | None:
        """The current embedding (None before `set_image`); can be set to a cached one."""
        return self._embedding

    @image_embedding.setter
    def image_embedding(self, embedding: ImageEmbedding | None) -> None:
        if embedding is not None:
            expected = resized_shape(*embedding.original_size, self.model.img_size)
            grid = self.model.prompt_encoder.image_embedding_size
            if tuple(embedding.input_size) != expected or embedding.features.shape[-2:] != grid:
                raise ValueError(
                    "This embedding was computed by a model of another input size; "
                    "call set_image(image) with this predictor's model instead."
                )
            embedding = ImageEmbedding(
                embedding.features.to(self.model.device),
                tuple(embedding.original_size),
                tuple(embedding.input_size),
            )
        self._embedding = embedding

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    def reset_image(self) -> None:
        self._embedding = None

    # -- prompts -------------------------------------------------------------------
    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
        upscale: bool = True,
    ) -> Prediction:
        """Masks for one object described by the given prompts.

        points: (N, 2) (row, col); labels: (N,) 1 = foreground, 0 = background
        (default: all foreground); box: (min_row, min_col, max_row, max_col), corners in
        any order; mask_input: (h, w) or (1, h, w) low-res logits from an earlier call,
        (h, w) = `model.prompt_encoder.mask_input_size` (256 x 256 for Meta's models,
        128 x 128 for tiny_cells). multimask=None returns the 3 ambiguity masks for a single point
        and the one unambiguous mask for anything more; True/False force either.

        Returns (masks (M, H, W) bool, scores (M,) predicted IoU, low_res_logits (M, h, w));
        with `upscale=False` masks is None: `upscale_masks(low_res_logits[i])` makes the
        ones needed (what an interactive tool shows is one of three).
        """
        embedding = self._require_embedding()
        point_xy, point_labels = self._points_to_model(points, labels, embedding)
        box_xy = self._box_to_model(box, embedding)
        mask = self._mask_to_model(mask_input)
        if point_xy is None and box_xy is None and mask is None:
            raise ValueError("Give at least one prompt: points, a box or a mask_input.")
        if multimask is None:
            multimask = box_xy is None and mask is None and len(point_xy) == 1

        device = self.model.device
        with torch.inference_mode():
            prompt_points = None
            if point_xy is not None:
                prompt_points = (
                    torch.as_tensor(point_xy, dtype=torch.float32, device=device)[None],
                    torch.as_tensor(point_labels, dtype=torch.int64, device=device)[None],
                )
            boxes = None if box_xy is None else torch.as_tensor(box_xy, device=device)[None]
            mask_t = None if mask is None else torch.as_tensor(mask, device=device)[None, None]
            low_res, iou = self.model.decode(
                embedding.features, prompt_points, boxes, mask_t, bool(multimask)
            )
            masks = None
            if upscale:
                logits = self.model.postprocess_masks(
                    low_res, embedding.input_size, embedding.original_size
                )
                masks = (logits[0] > self.model.mask_threshold).cpu().numpy()
            scores = iou[0].float().cpu().numpy()
            return Prediction(masks, scores, low_res[0].float().cpu().numpy())

    def upscale_masks(
        self, low_res_logits: np.ndarray, embedding: ImageEmbedding | None = None
    ) -> np.ndarray:
        """Low-res logits ((h, w) or (M, h, w), as `predict` returns them) -> masks at the
        image's size, (H, W) or (M, H, W) bool: the same masks `predict` gives. The image
        is `embedding`'s (default: the current one)."""
        embedding = embedding or self._require_embedding()
        logits = torch.as_tensor(np.asarray(low_res_logits, dtype=np.float32))
        single = logits.ndim == 2
        with torch.inference_mode():
            batch = logits.reshape(1, -1, *logits.shape[-2:]).to(self.model.device)
            full = self.model.postprocess_masks(
                batch, embedding.input_size, embedding.original_size
            )
            masks = (full[0] > self.model.mask_threshold).cpu().numpy()
        return masks[0] if single else masks

    def low_res_areas(self, low_res_logits: np.ndarray) -> np.ndarray:
        """(M,) mask areas measured on (M, h, w) low-res logits, inside the image (not
        the padding): a cheap stand-in for full-size areas, e.g. to order candidates."""
        embedding = self._require_embedding()
        logits = np.asarray(low_res_logits)
        scale = logits.shape[-1] / self.model.img_size
        rows, cols = (int(np.ceil(n * scale)) for n in embedding.input_size)
        inside = logits[..., :rows, :cols] > self.model.mask_threshold
        return inside.reshape(len(logits), -1).sum(axis=1)

    def predict_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One object per box, all decoded in one batch: (masks (B, H, W) bool, predicted
        IoU (B,)). boxes: (B, 4) as (min_row, min_col, max_row, max_col), any corner order."""
        embedding = self._require_embedding()
        boxes = _finite_array(boxes, "boxes")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (B, 4); got {boxes.shape}.")
        height, width = embedding.original_size
        if len(boxes) == 0:
            return np.zeros((0, height, width), bool), np.zeros(0, np.float32)
        xy = np.stack([self._box_to_model(box, embedding) for box in boxes])
        with torch.inference_mode():
            box_t = torch.as_tensor(xy, device=self.model.device)
            low_res, iou = self.model.decode(embedding.features, None, box_t, None, False)
            logits = self.model.postprocess_masks(
                low_res, embedding.input_size, embedding.original_size
            )
            masks = logits[:, 0] > self.model.mask_threshold
        return masks.cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def predict_batch(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_inputs: np.ndarray | None = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """B objects on the current image, each with its own prompts, decoded in one
        batch: (low-res logits (B, M, h, w) float32, predicted IoU (B, M)), M = 1, or
        the 3 ambiguity masks with `multimask`.

        points: (B, N, 2) (row, col), the same N for every object (pad with label -1);
        labels: (B, N) 1 foreground, 0 background, -1 padding (default all 1); boxes:
        (B, 4) (min_row, min_col, max_row, max_col); mask_inputs: (B, h, w) low-res
        logits, as `predict` returns them. `upscale_masks` turns the logits into masks.
        Raises ValueError for prompts of other shapes or batch sizes.
        """
        embedding = self._require_embedding()
        sizes = {len(p) for p in (points, boxes, mask_inputs) if p is not None}
        if not sizes:
            raise ValueError("Give at least one prompt: points, boxes or mask_inputs.")
        if len(sizes) != 1:
            raise ValueError(f"Give every prompt for the same number of objects; got {sizes}.")
        point_t = box_t = mask_t = None
        device = self.model.device
        if points is not None:
            coords = _finite_array(points, "points")
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(f"points must have shape (B, N, 2); got {coords.shape}.")
            labels = np.ones(coords.shape[:2], np.int64) if labels is None else labels
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != coords.shape[:2] or not np.isin(labels, (-1, 0, 1)).all():
                raise ValueError(f"labels must be (B, N) of 1, 0 or -1; got {labels.shape}.")
            point_t = (
                torch.as_tensor(self._scale_xy(coords, embedding), device=device),
                torch.as_tensor(labels, device=device),
            )
        if boxes is not None:
            corners = _finite_array(boxes, "boxes")
            if corners.ndim != 2 or corners.shape[1] != 4:
                raise ValueError(f"boxes must have shape (B, 4); got {corners.shape}.")
            xy = np.stack([self._box_to_model(box, embedding) for box in corners])
            box_t = torch.as_tensor(xy, device=device)
        if mask_inputs is not None:
            masks = _finite_array(mask_inputs, "mask_inputs").astype(np.float32)
            expected = self.model.prompt_encoder.mask_input_size
            if masks.ndim != 3 or masks.shape[1:] != expected:
                raise ValueError(f"mask_inputs must be (B, *{expected}); got {masks.shape}.")
            mask_t = torch.as_tensor(masks, device=device)[:, None]
        with torch.inference_mode():
            low_res, iou = self.model.decode(
                embedding.features, point_t, box_t, mask_t, bool(multimask)
            )
        return low_res.float().cpu().numpy(), iou.float().cpu().numpy()

    # -- conversion of prompts to the model's (x, y) input frame, done here only ----
    def _require_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError("No image is set: call set_image(image) before predict().")
        return self._embedding

    def _scale_xy(self, rows_cols: np.ndarray, embedding: ImageEmbedding) -> np.ndarray:
        (height, width), (in_h, in_w) = embedding.original_size, embedding.input_size
        factors = np.array([in_w / width, in_h / height], dtype=np.float64)
        return (rows_cols[..., ::-1] * factors).astype(np.float32)

    def _points_to_model(
        self, points, labels, embedding: ImageEmbedding
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if points is None:
            if labels is not None:
                raise ValueError("labels were given without points.")
            return None, None
        coords = _finite_array(points, "points")
        if coords.ndim == 1 and coords.shape == (2,):
            coords = coords[None]
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise ValueError(f"points must have shape (N, 2) as (row, col); got {coords.shape}.")
        if labels is None:
            labels = np.ones(len(coords), dtype=np.int64)
        labels = np.atleast_1d(np.asarray(labels))
        if labels.shape != (len(coords),):
            raise ValueError(
                f"Got {len(coords)} points but labels of shape {labels.shape}: "
                "give one label per point."
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"Point labels must be 1 (foreground) or 0 (background); got {np.unique(labels)}."
            )
        return self._scale_xy(coords, embedding), labels.astype(np.int64)

    def _box_to_model(self, box, embedding: ImageEmbedding) -> np.ndarray | None:
        if box is None:
            return None
        corners = _finite_array(box, "box").reshape(-1)
        if corners.shape != (4,):
            raise ValueError(
                f"box must be (min_row, min_col, max_row, max_col); got {np.shape(box)}."
            )
        corners = corners.reshape(2, 2)
        ordered = np.stack([corners.min(axis=0), corners.max(axis=0)])
        return self._scale_xy(ordered, embedding).reshape(4)

    def _mask_to_model(self, mask_input) -> np.ndarray | None:
        if mask_input is None:
            return None
        expected = self.model.prompt_encoder.mask_input_size
        mask = _finite_array(mask_input, "mask_input").astype(np.float32)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.shape != expected:
            raise ValueError(
                f"mask_input must be one low-res logit map of shape {expected} (or "
                f"(1, *{expected})), such as low_res_logits[i] of an earlier predict(); "
                f"got {np.shape(mask_input)}."
            )
        return mask


def embed_image(
    model: Sam, image: np.ndarray, on_block: Callable[[int, int], None] | None = None
) -> ImageEmbedding:
    """The `ImageEmbedding` of a 2D image, as `SamPredictor.set_image` computes it; for
    callers that cache embeddings (the plugin computes them in a worker thread)."""
    rgb = to_uint8_rgb(image)
    resized = resize_longest_side(rgb, model.img_size)
    pixels = torch.tensor(resized).permute(2, 0, 1)[None].to(model.device)
    with torch.inference_mode():
        features = model.encode_image(pixels, on_block)
        model.prepare_decoder(features)  # here, in the worker, not in the first click
    return ImageEmbedding(features, rgb.shape[:2], resized.shape[:2])


def head_image(model: Sam, image: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """The image as an instance decoder with an image path reads it (see
    `model.instance_decoder`): (1, 3, F, F) float32 on the model's device, F = 16 x the
    embedding grid (the head's output side: 512 for tiny_cells, 1024 for Meta's
    models). `image` is the 2D image given to `embed_image` (any dtype, gray or RGB),
    `input_size` its size at the encoder's input (`ImageEmbedding.input_size`): the
    image fills the top-left (input_size x F / img_size) of the frame, as it fills
    the encoder's input, resized with antialiasing, normalised with the encoder's
    pixel mean and std, zero elsewhere."""
    side = 16 * model.prompt_encoder.image_embedding_size[0]
    height, width = (extent * side // model.img_size for extent in input_size)
    pixels = torch.from_numpy(to_uint8_rgb(image)).permute(2, 0, 1)[None].float()
    pixels = torch.nn.functional.interpolate(
        pixels, (height, width), mode="bilinear", align_corners=False, antialias=True
    ).to(model.device)
    normed = (pixels - model.pixel_mean.float()) / model.pixel_std.float()
    return torch.nn.functional.pad(normed, (0, side - width, 0, side - height))


def _finite_array(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric; got {values!r}.") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array
