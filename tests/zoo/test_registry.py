"""The registry of named models, the package's exports and the layering of the zoo."""

from __future__ import annotations

import subprocess
import sys

import pytest

import napari_sam
from napari_sam import zoo
from napari_sam.model import CONFIGS
from napari_sam.zoo import ModelEntry, UnknownModelError, get_entry, register, registry, unregister
from tests.reference import TINY

BUILTIN = [
    "vit_b",
    "vit_l",
    "vit_h",
    "vit_b_lm",
    "vit_l_lm",
    "vit_b_em_organelles",
    "vit_l_em_organelles",
]


def test_builtin_entries_are_complete():
    entries = registry()
    assert set(BUILTIN) <= set(entries)
    for name in BUILTIN:
        entry = entries[name]
        assert entry.name == name
        assert entry.config == CONFIGS["_".join(name.split("_")[:2])]
        assert entry.url.startswith("https://")
        assert entry.licence in ("Apache-2.0", "MIT")
        assert entry.description and "\n" not in entry.description
        assert entry.filename.endswith((".pt", ".pth"))
    # Meta's files keep their published names; micro-sam's, all called vit_b.pt or
    # vit_l.pt upstream, are named after the entry.
    assert entries["vit_h"].filename == "sam_vit_h_4b8939.pth"
    assert entries["vit_h"].size == 2564550879
    assert entries["vit_h"].known_hash.startswith("sha256:a7bf3b02")
    assert entries["vit_b_lm"].filename == "vit_b_lm.pt"
    assert entries["vit_b_lm"].known_hash == "xxh128:fe9252a29f3f4ea53c15a06de471e186"
    assert len({entries[name].filename for name in BUILTIN}) == len(BUILTIN)


def test_register_and_unregister():
    entry = ModelEntry(
        name="test_entry",
        config=TINY,
        url="http://127.0.0.1:9/x.pt",
        known_hash="sha256:" + "a" * 64,
        size=10,
        licence="MIT",
        description="test",
    )
    register(entry)
    try:
        assert get_entry("test_entry") is entry
        with pytest.raises(ValueError, match="already registered"):
            register(entry)
        replacement = ModelEntry(**{**entry.__dict__, "description": "replaced"})
        register(replacement, overwrite=True)
        assert get_entry("test_entry").description == "replaced"
    finally:
        unregister("test_entry")
    with pytest.raises(UnknownModelError, match="vit_b_lm"):
        get_entry("test_entry")
    # The snapshot is read-only.
    with pytest.raises(TypeError):
        registry()["x"] = entry  # type: ignore[index]


def test_entry_hash_must_name_its_algorithm():
    with pytest.raises(ValueError, match="sha256"):
        ModelEntry("x", TINY, "http://h/x.pt", "md5:abc", None, "MIT", "x")


def test_package_exports():
    assert napari_sam.load_model is zoo.load_model
    assert napari_sam.available_devices is zoo.available_devices


def test_importing_the_package_or_the_zoo_stays_light():
    code = (
        "import sys, napari_sam; assert 'torch' not in sys.modules;"
        "import napari_sam.zoo;"
        "bad = [m for m in ('napari', 'qtpy', 'napari_sam.predictor') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
