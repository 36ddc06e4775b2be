"""Automatic instance segmentation (AIS) from a dense decoder head: decode once, label fast.

>>> maps = predict_instance_maps(model, image)      # the head's three maps, once per image
>>> labels = maps.labels()                          # (H, W) int32, defaults
>>> labels = maps.labels(center_distance_threshold=0.4, min_size=30)   # milliseconds again

The method is micro-sam's (Archit et al., Nature Methods 2025): seeds where a pixel is
both near its object's centre and far from its boundary, grown by a seeded watershed on
the boundary-distance map inside the foreground. Decoding runs the head (one pass over
the embedding); re-labelling with other thresholds only re-runs the watershed, so tuning
the parameters is interactive. Smoothing follows vigra's Gaussian (kernel radius 3 sigma,
mirrored borders), which micro-sam uses, through scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential, watershed

from ..model.instance_decoder import OUTPUTS
from ..predictor import ImageEmbedding, embed_image, head_image

__all__ = [
    "AIS_DEFAULTS",
    "AIS_HELP",
    "InstanceMaps",
    "ais_defaults",
    "has_instance_head",
    "predict_instance_maps",
]

AIS_DEFAULTS = {
    "center_distance_threshold": 0.5,
    "boundary_distance_threshold": 0.5,
    "foreground_threshold": 0.5,
    "foreground_smoothing": 1.0,
    "distance_smoothing": 1.6,
    "min_size": 10,
}
AIS_HELP = {
    "center_distance_threshold": "seeds need a centre distance below this (0-1): lower "
    "splits touching objects more, higher merges them",
    "boundary_distance_threshold": "seeds need a boundary distance below this (0-1): lower "
    "keeps only object interiors as seeds",
    "foreground_threshold": "pixels above this foreground probability (0-1) belong to an "
    "object: higher gives smaller, fewer objects",
    "foreground_smoothing": "Gaussian sigma (pixels) on the foreground map, against "
    "checkerboard artefacts; 0: none",
    "distance_smoothing": "Gaussian sigma (pixels) on both distance maps, against "
    "spurious seeds; objects under about 4 sigma across lose their seed: lower it for "
    "tiny objects; 0: none",
    "min_size": "objects of fewer pixels are removed",
}


def ais_defaults(model) -> dict:
    """The AIS parameters for `model`: `AIS_DEFAULTS` (micro-sam's), updated by the
    thresholds its zoo entry carries for its head (`model.ais_defaults`)."""
    return {**AIS_DEFAULTS, **getattr(model, "ais_defaults", {})}


def has_instance_head(model) -> bool:
    """Whether `model` (a `Sam`) carries an instance segmentation decoder."""
    return getattr(model, "instance_decoder", None) is not None


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return values
    return ndimage.gaussian_filter(values, sigma, mode="mirror", truncate=3.0)


@dataclass
class InstanceMaps:
    """The head's maps for one 2D image, each (H, W) float32 in [0, 1] at the image's
    size: foreground probability, normalised distance to the object's centre and to its
    boundary (inverted: 0 innermost, 1 at the rim). Smoothed maps are kept per sigma.
    `defaults`: the parameters `labels()` uses unless told (the model's `ais_defaults`)."""

    foreground: np.ndarray
    center_distances: np.ndarray
    boundary_distances: np.ndarray
    defaults: dict = field(default_factory=lambda: dict(AIS_DEFAULTS))
    _smoothed: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.foreground.shape

    def _smoothed_map(self, name: str, sigma: float) -> np.ndarray:
        key = (name, float(sigma))
        if key not in self._smoothed:
            self._smoothed[key] = _smooth(getattr(self, name), sigma)
        return self._smoothed[key]

    def labels(self, **params) -> np.ndarray:
        """(H, W) int32 instance labels (0: background, ids 1..N in row-major order of
        first appearance) from the maps; `params` override `defaults` (see
        `AIS_HELP`). Raises ValueError for an unknown or out-of-range parameter."""
        p = _check_params({**self.defaults, **params})
        foreground = self._smoothed_map("foreground", p["foreground_smoothing"])
        centers = self._smoothed_map("center_distances", p["distance_smoothing"])
        boundaries = self._smoothed_map("boundary_distances", p["distance_smoothing"])
        inside = foreground > p["foreground_threshold"]
        seeds = (
            (centers < p["center_distance_threshold"])
            & (boundaries < p["boundary_distance_threshold"])
            & inside
        )
        markers = connected_components(seeds, connectivity=2)
        segmentation = watershed(boundaries, markers, mask=inside, connectivity=1)
        if p["min_size"] > 0:
            ids, sizes = np.unique(segmentation, return_counts=True)
            segmentation[np.isin(segmentation, ids[sizes < p["min_size"]])] = 0
        segmentation = relabel_sequential(segmentation)[0]
        return segmentation.astype(np.int32, copy=False)


def _check_params(params: dict) -> dict:
    unknown = sorted(set(params) - set(AIS_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {unknown} for method 'ais'; it takes {sorted(AIS_DEFAULTS)}."
        )
    merged = {**AIS_DEFAULTS, **params}
    for name, value in merged.items():
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
            raise ValueError(f"{name} must be a number; got {value!r}.")
        if name.endswith("threshold") and not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1]; got {value}.")
        if value < 0:
            raise ValueError(f"{name} must not be negative; got {value}.")
    return merged


def predict_instance_maps(
    model, image: np.ndarray | None = None, *, embedding: ImageEmbedding | None = None
) -> InstanceMaps:
    """Run `model`'s instance head on a 2D image ((H, W) or (H, W, 3|4), any dtype) or on
    its `embedding` (this model's, e.g. from a cache: the encoder is skipped).

    A head with an image path (the bundled model's) reads the image too, so it needs
    `image` also when the embedding is given. The (16h, 16w) output is resized to the
    model's input size, cropped to the resized image and resized to (H, W),
    bilinearly, as micro-sam does. Raises ValueError when the model has no head, or
    when neither or a mismatched image/embedding is given, or the image is missing
    for a head that reads it.
    """
    if not has_instance_head(model):
        raise ValueError(
            "This model has no instance segmentation head (method 'ais'): load a model "
            "that carries one (tiny_cells, vit_b_lm, vit_l_lm, *_em_organelles) or use "
            "method 'amg'."
        )
    if embedding is None:
        if image is None:
            raise ValueError("Give the image or its embedding.")
        embedding = embed_image(model, image)
    elif image is not None and tuple(np.shape(image)[:2]) != tuple(embedding.original_size):
        raise ValueError(
            f"The embedding belongs to an image of shape {tuple(embedding.original_size)}, "
            f"not {tuple(np.shape(image)[:2])}: pass the embedding of this image or none."
        )
    decoder = model.instance_decoder
    pixels = None
    if decoder.image_channels:
        if image is None:
            raise ValueError(
                "This model's instance head reads the image as well as its embedding: "
                "pass the image too."
            )
        pixels = head_image(model, image, embedding.input_size)
    features = embedding.features.to(next(decoder.parameters()).device, torch.float32)
    with torch.inference_mode():
        maps = decoder(features.contiguous(), pixels)
        size = model.img_size
        maps = F.interpolate(maps, (size, size), mode="bilinear", align_corners=False)
        in_h, in_w = embedding.input_size
        maps = F.interpolate(
            maps[..., :in_h, :in_w], tuple(embedding.original_size),
            mode="bilinear", align_corners=False,
        )  # fmt: skip
    maps = maps[0].float().cpu().numpy()
    named = {name: maps[i] for i, name in enumerate(OUTPUTS)}
    return InstanceMaps(**named, defaults=ais_defaults(model))
