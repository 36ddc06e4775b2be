"""Automatic segmentation: SAM's grid of point prompts turned into instance labels.

Pure numpy/torch, no napari: `AutomaticMaskGenerator` decodes the grid and filters the
masks (generator.py, on the crops and points of grid.py); `masks_to_labels` paints them
into one label image (records.py); `segment_slices` / `segment_everything_slices` do
that for every 2D slice of nD data (slices.py); `segment_everything` is the one entry
point for a 2D image (everything.py), and an empty result says why (report.py).
"""

from .everything import METHODS, NoObjectsWarning, segment_everything
from .generator import MICROSCOPY_DEFAULTS, AutomaticMaskGenerator, GenerationCancelled
from .grid import crop_boxes, point_grid
from .records import MaskRecord, masks_to_labels
from .report import ScoreReport
from .slices import SliceLabels, segment_everything_slices, segment_slices, slice_views

__all__ = [
    "METHODS",
    "MICROSCOPY_DEFAULTS",
    "AutomaticMaskGenerator",
    "GenerationCancelled",
    "MaskRecord",
    "NoObjectsWarning",
    "ScoreReport",
    "SliceLabels",
    "crop_boxes",
    "masks_to_labels",
    "point_grid",
    "segment_everything",
    "segment_everything_slices",
    "segment_slices",
    "slice_views",
]
