"""napari-sam-labeler: Segment Anything for napari and for scripts.

Heavy modules (torch) are imported on first use, so that importing the package, as
napari does when it reads the plugin manifest, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "SamPredictor": "napari_sam.predictor",
    "ImageEmbedding": "napari_sam.predictor",
    "TiledPredictor": "napari_sam.tiled",
    "AutomaticMaskGenerator": "napari_sam.automatic",
    "MaskRecord": "napari_sam.automatic",
    "masks_to_labels": "napari_sam.automatic",
    "segment_everything": "napari_sam.automatic",
    "Sam": "napari_sam.model",
    "SamConfig": "napari_sam.model",
    "build_sam": "napari_sam.model",
    "load_model": "napari_sam.zoo",
    "available_devices": "napari_sam.zoo",
    "AnnotationSession": "napari_sam.interactive",
    "propagate": "napari_sam.volume",
    "propagate_objects": "napari_sam.volume",
    "embed_slices": "napari_sam.volume",
    "link_slices": "napari_sam.volume",
}

__all__ = [
    "AnnotationSession",
    "AutomaticMaskGenerator",
    "ImageEmbedding",
    "MaskRecord",
    "Sam",
    "SamConfig",
    "SamPredictor",
    "TiledPredictor",
    "__version__",
    "available_devices",
    "build_sam",
    "embed_slices",
    "link_slices",
    "load_model",
    "masks_to_labels",
    "propagate",
    "propagate_objects",
    "segment_everything",
]

if TYPE_CHECKING:
    from .automatic import AutomaticMaskGenerator, MaskRecord, masks_to_labels, segment_everything
    from .interactive import AnnotationSession
    from .model import Sam, SamConfig, build_sam
    from .predictor import ImageEmbedding, SamPredictor
    from .tiled import TiledPredictor
    from .volume import embed_slices, link_slices, propagate, propagate_objects
    from .zoo import available_devices, load_model


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
