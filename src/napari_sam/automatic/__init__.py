"""Automatic segmentation: SAM's grid of point prompts turned into instance labels.

Pure numpy/torch, no napari: `AutomaticMaskGenerator` decodes the grid and filters the
masks (generator.py, on the crops and points of grid.py); `masks_to_labels` paints them
into one label image (records.py); `segment_slices` / `segment_everything_slices` do
that for every 2D slice of nD data (slices.py).
"""

from .generator import MICROSCOPY_DEFAULTS, AutomaticMaskGenerator, GenerationCancelled
from .grid import crop_boxes, point_grid
from .records import MaskRecord, masks_to_labels
from .slices import SliceLabels, segment_everything_slices, segment_slices, slice_views

__all__ = [
    "MICROSCOPY_DEFAULTS",
    "AutomaticMaskGenerator",
    "GenerationCancelled",
    "MaskRecord",
    "SliceLabels",
    "crop_boxes",
    "masks_to_labels",
    "point_grid",
    "segment_everything_slices",
    "segment_slices",
    "slice_views",
]
