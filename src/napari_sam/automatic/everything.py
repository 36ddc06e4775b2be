"""One entry point for automatic instance segmentation of a 2D image into a label image.

>>> labels = segment_everything(model, image)                    # (H, W) int32 labels
>>> labels = segment_everything(model, image, method="amg", points_per_side=32)
>>> segmenter = EverythingSegmenter(model); segmenter.decode(image)   # decode once ...
>>> labels = segmenter.labels(center_distance_threshold=0.4)          # ... filter many times

Methods:
- "ais", automatic instance segmentation (micro-sam, Archit et al. 2025): a dense
  decoder head on the image embedding predicts foreground and distances to object
  centres and boundaries, and a seeded watershed separates the objects
  (`automatic.instances`). One decoder pass: seconds faster than the grid, and made for
  cells and nuclei. Needs a model with a head (`has_instance_head`): tiny_cells and
  micro-sam's `*_lm` / `*_em_organelles` carry one.
- "amg", SAM's automatic mask generation (Kirillov et al. 2023): a grid of point
  prompts, filtered by predicted IoU and stability, de-duplicated by NMS
  (`AutomaticMaskGenerator`, with `grid_defaults(model)` unless given). Any SAM model;
  finds objects of any kind, also inside others.
`method=None` takes "ais" where the model has a head, else "amg".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .generator import MICROSCOPY_DEFAULTS, AutomaticMaskGenerator
from .grid_pool import DECODE_PARAMS, FILTER_PARAMS, GridCandidates
from .instances import (
    AIS_DEFAULTS,
    InstanceMaps,
    ais_defaults,
    has_instance_head,
    predict_instance_maps,
)
from .records import painted_labels
from .report import ScoreReport

__all__ = [
    "METHODS",
    "EverythingSegmenter",
    "NoObjectsWarning",
    "check_params",
    "choose_method",
    "grid_defaults",
    "grid_params",
    "is_blank",
    "segment_everything",
]  # fmt: skip

METHODS = ("amg", "ais")


class NoObjectsWarning(UserWarning):
    """Segment everything found nothing; the message says which filter removed what."""


def choose_method(model, method: str | None) -> str:
    """The method `method` names, or for None the best one `model` supports. Raises
    ValueError for an unknown method, or "ais" on a model without a head."""
    if method is None:
        return "ais" if has_instance_head(model) else "amg"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None; got {method!r}.")
    if method == "ais" and not has_instance_head(model):
        raise ValueError(
            "This model has no instance segmentation head, which method='ais' needs: load "
            "one that carries it (vit_b_lm, vit_l_lm, *_em_organelles) or use "
            "method='amg' (the grid of point prompts)."
        )
    return method


def grid_defaults(model) -> dict:
    """The grid method's default parameters for `model`: `MICROSCOPY_DEFAULTS`, updated
    by the thresholds its zoo entry carries (`model.grid_defaults`, e.g. tiny_cells')."""
    return {**MICROSCOPY_DEFAULTS, **getattr(model, "grid_defaults", {})}


def grid_params(model, params: dict, shape: tuple[int, int]) -> dict:
    """The grid generator's parameters for an (H, W) image: `grid_defaults(model)` updated
    by `params`. A default grid denser than a thin image (fewer pixels on its short side
    than points per side) gets one point per pixel of that side; a points_per_side the
    caller gave is kept, and the generator refuses it when too dense."""
    merged = {**grid_defaults(model), **params}
    if "points_per_side" not in params:
        merged["points_per_side"] = max(1, min(merged["points_per_side"], *shape))
    return merged


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ValueError(
            f"segment_everything takes one 2D image, (H, W) or (H, W, 3|4); got shape "
            f"{image.shape}. For a stack: napari_sam.automatic.segment_everything_slices."
        )
    return image


def check_params(method: str, params: dict, *, crops: bool = True) -> None:
    """Raise ValueError naming the parameters `method` does not take, and those it does
    (`crops`: whether the grid's crop parameters count; a decoded grid has one layer)."""
    if method == "ais":
        allowed = set(AIS_DEFAULTS)
    else:
        allowed = set(MICROSCOPY_DEFAULTS) | set(DECODE_PARAMS) | set(FILTER_PARAMS)
        if crops:
            allowed |= {"crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                        "crop_n_points_downscale_factor"}  # fmt: skip
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown} for method {method!r}; it takes "
                         f"{sorted(allowed)}.")  # fmt: skip


def is_blank(image: np.ndarray) -> bool:
    """One value everywhere (NaN ignored): no object can be told from anything. SAM
    still answers prompts on such an image (a weak model with lowered thresholds even
    keeps its guesses), so both methods return no objects for it without decoding."""
    finite = image[np.isfinite(image)] if np.issubdtype(image.dtype, np.floating) else image
    return finite.size == 0 or bool(np.all(finite == finite.flat[0]))


def _blank_reason(image: np.ndarray) -> str:
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        return "The image holds no finite value (all NaN or infinite)."
    return "The image is blank (one value everywhere)."


def segment_everything(
    model,
    image: np.ndarray,
    method: str | None = None,
    *,
    embedding=None,
    progress: Callable[[int, int], object] | None = None,
    cancelled: Callable[[], bool] | None = None,
    **params,
) -> np.ndarray:
    """Every object of a 2D image as an (H, W) int32 label image (0: background; ids
    1..N; for "amg", smaller objects drawn over larger ones that contain them).

    model: a `Sam`. image: (H, W) gray or (H, W, 3|4) RGB(A), any dtype (for stacks,
    `segment_everything_slices`). method: "amg", "ais" or None (see module docstring).
    embedding: this model's `ImageEmbedding` of the image, to skip the encoder.
    params: the method's parameters: for "ais" those of `ais_defaults(model)` (see
    `AIS_HELP`),
    for "amg" those of `AutomaticMaskGenerator` on top of `grid_defaults(model)` (see
    `grid_params`: the default grid is thinned for an image thinner than it).
    progress/cancelled: as `AutomaticMaskGenerator.generate` ("amg" only).
    Warns `NoObjectsWarning` ("amg") with the scores seen when nothing passes the filters.
    Raises ValueError for an unknown method, "ais" on a model without a head, bad
    parameters or an image that is not 2D.
    """
    method = choose_method(model, method)
    image = _check_image(image)
    if is_blank(image):
        warnings.warn(NoObjectsWarning(_blank_reason(image)), stacklevel=2)
        return np.zeros(image.shape[:2], np.int32)
    check_params(method, params)
    if method == "ais":
        maps = predict_instance_maps(model, image, embedding=embedding)
        return maps.labels(**params)
    generator = AutomaticMaskGenerator(model, **grid_params(model, params, image.shape[:2]))
    records = generator.generate(image, embedding=embedding, progress=progress,
                                 cancelled=cancelled)  # fmt: skip
    if not records:
        why = generator.last_report.why_empty(
            generator.pred_iou_thresh, generator.stability_score_thresh
        )
        warnings.warn(NoObjectsWarning(why), stacklevel=2)
    return painted_labels(records, image.shape[:2])


class EverythingSegmenter:
    """Segment everything with one method, decoding each image once: `decode(image)`
    keeps the head's maps ("ais", `InstanceMaps`) or every grid candidate ("amg",
    `GridCandidates`), and `labels(**params)` applies thresholds to them in
    milliseconds to a second. Parameters that change the decoding itself (the grid's
    `DECODE_PARAMS`) are given to `decode`.

    model: a `Sam`; method: as `segment_everything` (None picks); params: defaults for
    `decode` and `labels` (ValueError for names the method does not take). Only the
    last decoded image is kept (`decoded`; its memory: `nbytes`).
    """

    def __init__(self, model, method: str | None = None, **params) -> None:
        self.model = model
        self.method = choose_method(model, method)
        self.params = dict(params)  # defaults for decode() / labels(), checked there
        self.decoded: InstanceMaps | GridCandidates | None = None
        self.image_shape: tuple[int, int] | None = None
        self._split(self.params)  # unknown names fail here, not on the first image

    def _split(self, params: dict) -> tuple[dict, dict]:
        """(decoding, labelling) parameters of this method."""
        check_params(self.method, params, crops=False)
        decode = {k: v for k, v in params.items() if k in DECODE_PARAMS}
        return decode, {k: v for k, v in params.items() if k not in DECODE_PARAMS}

    def decode(
        self,
        image: np.ndarray,
        *,
        embedding=None,
        progress: Callable[[int, int], object] | None = None,
        cancelled: Callable[[], bool] | None = None,
        **decode_params,
    ) -> None:
        """Run the model on a 2D image (see `segment_everything`) and keep the result.
        decode_params: for "amg" `points_per_side` etc. (`DECODE_PARAMS`); "ais" has none.
        Raises ValueError for a bad image or parameters."""
        image = _check_image(image)
        decode_params = {**self._split(self.params)[0], **decode_params}
        if self.method == "ais":
            if decode_params:
                raise ValueError(f"method 'ais' has no decoding parameters; got {decode_params}.")
            if is_blank(image):  # nothing to find: maps of pure background
                zero = np.zeros(image.shape[:2], np.float32)
                self.decoded = InstanceMaps(zero, zero + 1, zero + 1, ais_defaults(self.model))
            else:
                self.decoded = predict_instance_maps(self.model, image, embedding=embedding)
        elif is_blank(image):  # no candidates, and the report says so
            self.decoded = GridCandidates(self.model, [], ScoreReport(), decode_params)
        else:
            grid = grid_params(self.model, decode_params, image.shape[:2])
            params = {"points_per_side": grid["points_per_side"], **decode_params}
            self.decoded = GridCandidates.decode(self.model, image, embedding=embedding,
                                                 progress=progress, cancelled=cancelled,
                                                 **params)  # fmt: skip
        self.image_shape = image.shape[:2]

    def labels(self, **params) -> np.ndarray:
        """(H, W) int32 labels of the decoded image with these parameters: "ais" those of
        `ais_defaults(model)`, "amg" the grid's filters (defaults `grid_defaults(model)`'). Warns
        `NoObjectsWarning` as `segment_everything`. Raises RuntimeError before `decode`,
        ValueError for bad parameters."""
        if self.decoded is None:
            raise RuntimeError("Call decode(image) first.")
        decoding = sorted(set(params) & set(DECODE_PARAMS))
        if decoding:
            raise ValueError(f"{decoding} change the decoding: pass them to decode(), not "
                             "to labels().")  # fmt: skip
        params = self._split({**self.params, **params})[1]
        if isinstance(self.decoded, InstanceMaps):
            return self.decoded.labels(**params)
        defaults = grid_defaults(self.model)
        filters = {k: v for k, v in defaults.items() if k not in DECODE_PARAMS}
        filters.update(params)
        records = self.decoded.records(**filters)
        if not records:
            warnings.warn(NoObjectsWarning(self.decoded.why_empty(**filters)), stacklevel=2)
        return painted_labels(records, self.image_shape)

    @property
    def defaults(self) -> dict:
        """The method's parameters and their defaults."""
        if self.method == "ais":
            return ais_defaults(self.model)
        return grid_defaults(self.model)

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded image (bytes)."""
        if isinstance(self.decoded, InstanceMaps):
            return sum(m.nbytes for m in self.decoded._smoothed.values()) + 3 * (
                self.decoded.foreground.nbytes
            )
        return 0 if self.decoded is None else self.decoded.nbytes
