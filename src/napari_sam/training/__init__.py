"""Training SAM: the paper's ambiguity-aware loss, simulated interactive prompting,
data from label images, and the loop used for fine-tuning and the bundled model.

`finetune` (see `napari_sam.training.finetuning`) fine-tunes a model on a user's own
(image, labels) pairs; it is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "FinetuneResult": "napari_sam.training.finetuning",
    "finetune": "napari_sam.training.finetuning",
    "finetuned_models": "napari_sam.training.finetuning",
    "labelled_slices": "napari_sam.training.finetuning",
    "register_finetuned": "napari_sam.training.finetuning",
    "save_finetuned": "napari_sam.training.finetuning",
}

__all__ = [
    "FinetuneResult",
    "finetune",
    "finetuned_models",
    "labelled_slices",
    "register_finetuned",
    "save_finetuned",
]

if TYPE_CHECKING:
    from .finetuning import (
        FinetuneResult,
        finetune,
        finetuned_models,
        labelled_slices,
        register_finetuned,
        save_finetuned,
    )


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_sam.training' has no attribute {name!r}")
