"""The bundled `tiny_cells` model: in the package, loaded offline, verified, the default."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam import SamPredictor
from napari_sam.cli import main
from napari_sam.model import TINY_CELLS
from napari_sam.training.synthetic import generate
from napari_sam.zoo import (
    ModelDownloadError,
    cached_path,
    default_model,
    get_entry,
    load_model,
)
from napari_sam.zoo import download as download_module

# What the user gets: the preselected candidate (highest predicted IoU). The goal is 0.8;
# the pass mark sits just under the shipped weights' score on these nuclei (README table,
# "nucleus centre, preselected") and is raised with every better model.
PRESELECTED_NUCLEUS_IOU = 0.53


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the bundled model must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_bundled_model_loads_offline_without_the_cache(offline, cache):
    entry = get_entry("tiny_cells")
    assert entry.bundled and cached_path(entry).is_file()
    assert cached_path(entry).stat().st_size == entry.size < 16e6
    model = load_model("tiny_cells", device="cpu")
    assert model.config == TINY_CELLS
    assert not cache.exists() or not any(cache.iterdir())  # nothing downloaded or copied


def nucleus_centres(sample, min_area: int = 60):
    """(row, col) of the innermost pixel of each nucleus of at least `min_area` pixels."""
    for nucleus_id in np.unique(sample.nuclei)[1:]:
        mask = sample.nuclei == nucleus_id
        if mask.sum() >= min_area:
            depth = ndi.distance_transform_edt(mask)
            yield mask, np.unravel_index(np.argmax(depth), mask.shape)


def test_a_click_at_the_centre_of_a_generated_nucleus_finds_it(offline):
    predictor = SamPredictor(load_model("tiny_cells", device="cpu"))
    ious = []
    for seed in range(6):  # held out: training draws (seed, step, index) triples
        sample = generate(np.random.default_rng(2 * 10**9 + seed), (256, 256))
        predictor.set_image(sample.image)
        for mask, (row, col) in list(nucleus_centres(sample))[:5]:
            masks, predicted_iou, _ = predictor.predict(points=[[row, col]])
            chosen = masks[np.argmax(predicted_iou)]
            ious.append((chosen & mask).sum() / (chosen | mask).sum())
    assert len(ious) >= 10
    assert np.mean(ious) >= PRESELECTED_NUCLEUS_IOU, ious


def test_a_damaged_bundled_file_says_to_reinstall(tmp_path, monkeypatch):
    (tmp_path / "tiny_cells.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(download_module, "BUNDLED_DIR", tmp_path)
    with pytest.raises(ModelDownloadError, match="Reinstall the package"):
        load_model("tiny_cells", device="cpu")
    (tmp_path / "tiny_cells.pt").unlink()
    with pytest.raises(ModelDownloadError, match="missing or damaged"):
        load_model("tiny_cells", device="cpu")


def test_the_bundled_model_is_the_default_until_another_is_downloaded(cache):
    assert default_model() == "tiny_cells"
    vit_b = cached_path(get_entry("vit_b_lm"))
    vit_b.parent.mkdir(parents=True, exist_ok=True)
    vit_b.write_bytes(b"stand-in")  # not the published file: never the default
    assert default_model() == "tiny_cells"


def test_the_cli_lists_it_as_bundled_and_download_is_a_no_op(offline, capsys):
    assert main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiny_cells"))
    assert "bundled" in line and "9 MB" in line
    assert main(["download", "tiny_cells"]) == 0
    assert str(cached_path(get_entry("tiny_cells"))) in capsys.readouterr().out
