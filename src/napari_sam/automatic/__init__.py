"""Automatic instance segmentation: SAM's grid of point prompts, or a dense head (AIS).

Pure numpy/torch, no napari: `AutomaticMaskGenerator` decodes the grid and filters the
masks (generator.py, on the crops and points of grid.py); `masks_to_labels` paints them
into one label image (records.py); `segment_slices` / `segment_everything_slices` do
that for every 2D slice of nD data (slices.py); `segment_everything` is the one entry
point for a 2D image (everything.py), and an empty result says why (report.py);
`EverythingSegmenter` decodes once and filters many times (grid_pool.py for the grid);
instances.py is the dense head's post-processing (seeded watershed).
"""

from .everything import (
    METHODS,
    EverythingSegmenter,
    NoObjectsWarning,
    check_params,
    choose_method,
    grid_defaults,
    segment_everything,
)
from .generator import MICROSCOPY_DEFAULTS, AutomaticMaskGenerator, GenerationCancelled
from .grid import crop_boxes, point_grid
from .grid_pool import GridCandidates
from .instances import (
    AIS_DEFAULTS,
    AIS_HELP,
    InstanceMaps,
    ais_defaults,
    has_instance_head,
    predict_instance_maps,
)
from .records import MaskRecord, masks_to_labels, painted_labels
from .report import ScoreReport
from .slices import SliceLabels, segment_everything_slices, segment_slices, slice_views

__all__ = [
    "AIS_DEFAULTS",
    "AIS_HELP",
    "METHODS",
    "MICROSCOPY_DEFAULTS",
    "AutomaticMaskGenerator",
    "EverythingSegmenter",
    "GenerationCancelled",
    "GridCandidates",
    "InstanceMaps",
    "MaskRecord",
    "NoObjectsWarning",
    "ScoreReport",
    "SliceLabels",
    "ais_defaults",
    "check_params",
    "choose_method",
    "crop_boxes",
    "grid_defaults",
    "has_instance_head",
    "masks_to_labels",
    "painted_labels",
    "point_grid",
    "predict_instance_maps",
    "segment_everything",
    "segment_everything_slices",
    "segment_slices",
    "slice_views",
]
