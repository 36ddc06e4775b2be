"""Named models: where each checkpoint lives, how to verify it, and what it is.

Meta publishes no checksums: the sha256 values are those several independent manifests
agree on; micro-sam pins only xxh128 hashes, so those entries use xxh128. Sizes are the
byte counts of the published files, None where they are not published.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from urllib.parse import urlparse

from ..model import CONFIGS, TINY_CELLS, SamConfig

_HASH_ALGORITHMS = ("sha256", "xxh128")


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model.

    `known_hash` is "<algorithm>:<hex digest>" with algorithm sha256 or xxh128 (the latter
    where a publisher only pins that one). `size` is the file's byte count, None where it
    is not published. `filename` is the name in the cache folder; by default the entry's
    name plus the URL's suffix, since different models share names such as "vit_b.pt".
    A `bundled` model ships inside the package (`napari_sam/models/<filename>`): it has
    no URL and is never downloaded, so it works offline. `grid_defaults` are the grid
    method's thresholds for this model where the microscopy defaults do not suit its
    predicted IoUs (see `napari_sam.automatic.grid_defaults`); `ais_defaults` the
    same for its instance head's thresholds (see `napari_sam.automatic.ais_defaults`).
    """

    name: str
    config: SamConfig
    url: str
    known_hash: str
    size: int | None
    licence: str
    description: str
    filename: str = ""
    bundled: bool = False
    grid_defaults: Mapping[str, float] = field(default_factory=dict)
    ais_defaults: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bundled and not self.filename:
            raise ValueError(f"Bundled model {self.name!r} needs the filename it ships as.")
        algorithm, _, digest = self.known_hash.partition(":")
        if algorithm not in _HASH_ALGORITHMS or not digest:
            raise ValueError(
                f"known_hash of model {self.name!r} must be 'sha256:<hex>' or "
                f"'xxh128:<hex>', got {self.known_hash!r}"
            )
        if not self.filename:
            suffix = PurePosixPath(urlparse(self.url).path).suffix or ".pt"
            object.__setattr__(self, "filename", f"{self.name}{suffix}")


_META = "Apache-2.0"
_MICRO_SAM = "MIT"
_BIOIMAGE_IO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"

_BUILTIN = (
    ModelEntry(
        name="tiny_cells",
        config=TINY_CELLS,
        url="",
        known_hash="sha256:8e8c5257947756f72e53754e1a2436d4dc79c2e740e6edfd5478f2421765a0fa",
        size=9201527,
        licence="BSD-3-Clause",
        description="small model trained on synthetic cells, nuclei and nucleoli; works "
        "offline; under-trained so far (use vit_b_lm for real work)",
        filename="tiny_cells.pt",
        bundled=True,
        # Its predicted IoUs lie in 0.1-0.42: at the microscopy defaults nothing passes.
        # Best F1 of a sweep on 6 held-out blob images (bench_instances' generator, 24 x 24
        # grid): 0.15 here against 0.007 at predicted IoU > 0 and stability >= 0.9.
        grid_defaults=MappingProxyType(
            {"pred_iou_thresh": 0.25, "stability_score_thresh": 0.5, "box_nms_thresh": 0.3}
        ),
    ),
    ModelEntry(
        name="vit_b",
        config=CONFIGS["vit_b"],
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        known_hash="sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375042383,
        licence=_META,
        description="Meta's SAM, ViT-B encoder: fastest of the official models",
        filename="sam_vit_b_01ec64.pth",
    ),
    ModelEntry(
        name="vit_l",
        config=CONFIGS["vit_l"],
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        known_hash="sha256:3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=1249524607,
        licence=_META,
        description="Meta's SAM, ViT-L encoder",
        filename="sam_vit_l_0b3195.pth",
    ),
    ModelEntry(
        name="vit_h",
        config=CONFIGS["vit_h"],
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        known_hash="sha256:a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2564550879,
        licence=_META,
        description="Meta's SAM, ViT-H encoder: most accurate official model, slowest",
        filename="sam_vit_h_4b8939.pth",
    ),
    ModelEntry(
        name="vit_b_lm",
        config=CONFIGS["vit_b"],
        url=f"{_BIOIMAGE_IO}/diplomatic-bug/1.2/files/vit_b.pt",
        known_hash="xxh128:fe9252a29f3f4ea53c15a06de471e186",
        size=None,
        licence=_MICRO_SAM,
        description="micro-sam, ViT-B fine-tuned on light microscopy (cells, nuclei)",
    ),
    ModelEntry(
        name="vit_l_lm",
        config=CONFIGS["vit_l"],
        url=f"{_BIOIMAGE_IO}/idealistic-rat/1.2/files/vit_l.pt",
        known_hash="xxh128:017f20677997d628426dec80a8018f9d",
        size=None,
        licence=_MICRO_SAM,
        description="micro-sam, ViT-L fine-tuned on light microscopy (cells, nuclei)",
    ),
    ModelEntry(
        name="vit_b_em_organelles",
        config=CONFIGS["vit_b"],
        url=f"{_BIOIMAGE_IO}/noisy-ox/1.2/files/vit_b.pt",
        known_hash="xxh128:f3bf2ed83d691456bae2c3f9a05fb438",
        size=None,
        licence=_MICRO_SAM,
        description="micro-sam, ViT-B fine-tuned on electron microscopy organelles",
    ),
    ModelEntry(
        name="vit_l_em_organelles",
        config=CONFIGS["vit_l"],
        url=f"{_BIOIMAGE_IO}/humorous-crab/1.2/files/vit_l.pt",
        known_hash="xxh128:810b084b6e51acdbf760a993d8619f2d",
        size=None,
        licence=_MICRO_SAM,
        description="micro-sam, ViT-L fine-tuned on electron microscopy organelles",
    ),
)

_lock = threading.Lock()
_entries: dict[str, ModelEntry] = {entry.name: entry for entry in _BUILTIN}


def register(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Add a model to the registry, so that `load_model(entry.name)` finds it.

    Replacing an existing name needs `overwrite=True`, so that a typo cannot silently
    shadow an official model.
    """
    with _lock:
        if entry.name in _entries and not overwrite:
            raise ValueError(
                f"A model named {entry.name!r} is already registered; "
                "pass overwrite=True to replace it."
            )
        _entries[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a model from the registry (built-in ones included)."""
    with _lock:
        _entries.pop(name, None)


def registry() -> Mapping[str, ModelEntry]:
    """A read-only snapshot of the registered models, by name."""
    with _lock:
        return MappingProxyType(dict(_entries))


class UnknownModelError(LookupError):
    """No model of that name is registered."""


def get_entry(name: str) -> ModelEntry:
    """The registered model `name`; the error lists the names there are."""
    with _lock:
        entry = _entries.get(name)
        names = sorted(_entries)
    if entry is None:
        raise UnknownModelError(f"No model named {name!r} is registered; choose one of {names}.")
    return entry
