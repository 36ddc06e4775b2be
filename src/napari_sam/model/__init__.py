"""Segment Anything in pure PyTorch, with the parameter layout of Meta's checkpoints."""

from .configs import CONFIGS, TINY_CELLS, SamConfig, get_config
from .sam import Sam, build_sam

__all__ = ["CONFIGS", "TINY_CELLS", "Sam", "SamConfig", "build_sam", "get_config"]
