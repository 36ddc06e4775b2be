"""Automatic segmentation: SAM's grid of point prompts turned into instance labels.

Pure numpy/torch, no napari: `AutomaticMaskGenerator` decodes the grid and filters the
masks; `masks_to_labels` paints them into one label image.
"""

from .generator import (
    MICROSCOPY_DEFAULTS,
    AutomaticMaskGenerator,
    GenerationCancelled,
    MaskRecord,
    crop_boxes,
    masks_to_labels,
    point_grid,
)

__all__ = [
    "MICROSCOPY_DEFAULTS",
    "AutomaticMaskGenerator",
    "GenerationCancelled",
    "MaskRecord",
    "crop_boxes",
    "masks_to_labels",
    "point_grid",
]
