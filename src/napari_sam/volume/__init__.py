"""Objects through volumes and time-lapses: propagation of a mask from slice to slice
(propagation.py, with the prompts and stop rule of rules.py, over the slices and
embeddings of stack.py), tracking with divisions and its lineage (lineage.py), and linking
per-slice objects into 3D objects (linking.py)."""

from .lineage import LINEAGE_COLUMNS, lineage_table, merge_lineage, write_lineage_csv
from .linking import link_slices
from .propagation import Propagation, VolumeObject, propagate, propagate_objects
from .rules import PropagationSettings, StopRule
from .stack import PropagationCancelled, SliceStack, embed_slices

__all__ = [
    "LINEAGE_COLUMNS",
    "Propagation",
    "PropagationCancelled",
    "PropagationSettings",
    "SliceStack",
    "StopRule",
    "VolumeObject",
    "embed_slices",
    "lineage_table",
    "link_slices",
    "merge_lineage",
    "propagate",
    "propagate_objects",
    "write_lineage_csv",
]
