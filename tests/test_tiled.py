"""Prompting in tiles at the image's own resolution: each prompt is decoded in the tile
that holds it, exactly as `SamPredictor` would decode it on that crop of the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

import napari_sam.tiled as tiled_module
from napari_sam import SamPredictor
from napari_sam.image import to_uint8_rgb
from napari_sam.model import build_sam
from napari_sam.tiled import TiledPredictor, tile_starts
from tests.reference import TINY
from tests.stand_ins import count_encodings


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(TINY).eval()  # a 256 px input


@pytest.fixture(scope="module")
def image():
    return data.coins()  # 303 x 384 gray: 2 x 2 tiles of 256 px


def crop_prediction(model, pixels, tile, **prompts):
    """SamPredictor on the tile's crop, prompts moved into it, masks put back in place."""
    predictor = SamPredictor(model)
    predictor.set_image(pixels[tile[0] : tile[2], tile[1] : tile[3]])
    origin = np.array(tile[:2], np.float64)
    if "points" in prompts:
        prompts["points"] = np.asarray(prompts["points"], np.float64) - origin
    if "box" in prompts:
        prompts["box"] = np.asarray(prompts["box"], np.float64) - np.tile(origin, 2)
    masks, scores, low_res = predictor.predict(**prompts)
    full = np.zeros((len(masks), *pixels.shape[:2]), bool)
    full[:, tile[0] : tile[2], tile[1] : tile[3]] = masks
    return full, scores, low_res


def assert_same(ours, expected):
    for a, b in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(a, b)


AXES = [(100, 256, 64), (256, 256, 64), (303, 256, 64), (1000, 256, 64), (2048, 128, 0),
        (777, 100, 50)]  # fmt: skip


@pytest.mark.parametrize(("length", "tile", "overlap"), AXES)
def test_tiles_cover_the_axis_with_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(length - tile, 0)
    ends = [min(s + tile, length) for s in starts]
    assert ends[-1] == length
    for end, next_start in zip(ends, starts[1:], strict=False):
        assert end - next_start >= overlap  # neighbours share at least `overlap` pixels


def test_an_image_that_fits_the_input_is_one_tile_and_plain_sam_predictor(model, image):
    small = image[:200, :250]
    predictor = TiledPredictor(model)
    predictor.set_image(small)
    assert predictor.tiles == [(0, 0, 200, 250)]
    reference = SamPredictor(model)
    reference.set_image(small)
    assert_same(predictor.predict(points=[[100, 120]]), reference.predict(points=[[100, 120]]))


def test_a_click_is_decoded_in_the_tile_that_holds_it_with_most_room(model, image):
    """303 x 384 in 256 px tiles: rows start at 0 and 47, columns at 0 and 128. A click
    at (150, 200) lies in all four; the tiles starting at column 128 leave it 72 px to
    their nearest edge inside the image, those at column 0 only 56 (to their right
    edge); of equals the first wins: (0, 128, 256, 384)."""
    predictor = TiledPredictor(model)
    predictor.set_image(image)
    assert predictor.tiles == [(0, 0, 256, 256), (0, 128, 256, 384),
                               (47, 0, 303, 256), (47, 128, 303, 384)]  # fmt: skip
    result = predictor.predict(points=[[150, 200]])
    assert predictor.last_tile == (0, 128, 256, 384)
    pixels = to_uint8_rgb(image)
    assert_same(result, crop_prediction(model, pixels, predictor.last_tile, points=[[150, 200]]))
    assert not result.masks[:, :, :128].any()  # nothing outside the tile
    predictor.predict(points=[[280, 20]])  # only the bottom-left tile holds it
    assert predictor.last_tile == (47, 0, 303, 256)


def test_tile_embeddings_are_made_on_first_use_and_kept(model, image, monkeypatch):
    encoded = count_encodings(monkeypatch, tiled_module)
    predictor = TiledPredictor(model, max_tiles=1)
    predictor.set_image(image)
    assert encoded == []  # nothing before a prompt needs it
    predictor.predict(points=[[150, 200]])
    predictor.predict(points=[[140, 210], [160, 190]])  # the same tile: no new encoding
    assert len(encoded) == 1
    predictor.predict(points=[[280, 20]])
    predictor.predict(points=[[150, 200]])  # dropped (max_tiles=1): encoded again
    assert len(encoded) == 3


def test_a_prompt_no_tile_holds_is_decoded_on_the_whole_image(model, image):
    box = [10, 10, 290, 370]  # larger than a tile
    predictor = TiledPredictor(model)
    predictor.set_image(image)
    reference = SamPredictor(model)
    reference.set_image(image)
    assert_same(predictor.predict(box=box), reference.predict(box=box))
    assert predictor.last_tile is None
    outside = [[150, 500]]  # a point beyond the image: SamPredictor's answer
    assert_same(predictor.predict(points=outside), reference.predict(points=outside))


def test_mask_input_is_read_in_the_previous_tile(model, image):
    predictor = TiledPredictor(model)
    predictor.set_image(image)
    first = predictor.predict(points=[[150, 200]])
    tile = predictor.last_tile
    points, labels = [[150, 200], [160, 230]], [1, 0]
    refined = predictor.predict(points=points, labels=labels, mask_input=first.low_res_logits[0])
    expected = crop_prediction(model, to_uint8_rgb(image), tile, points=points, labels=labels,
                               mask_input=first.low_res_logits[0])  # fmt: skip
    assert_same(refined, expected)
    with pytest.raises(ValueError, match="does not hold these prompts"):
        predictor.predict(points=[[280, 20]], mask_input=first.low_res_logits[0])


def test_a_16_bit_image_is_scaled_once_for_all_tiles(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (300, 400)).astype(np.uint16)
    image[150:, 200:] += 30000  # a bright quarter: per-tile scaling would differ
    predictor = TiledPredictor(model)
    predictor.set_image(image)
    result = predictor.predict(points=[[100, 100]])
    assert_same(result, crop_prediction(model, to_uint8_rgb(image), predictor.last_tile,
                                        points=[[100, 100]]))  # fmt: skip


def test_clicks_on_the_first_row_and_boxes_ending_at_the_edge_stay_in_a_tile(model):
    """From a new user's break test: a napari click on the first row can be at -0.4 (pixel
    0 spans -0.5..0.5), and a box with an exclusive end (skimage's regionprops) reaches
    the image's edge; both fell back to the whole image."""
    image = data.immunohistochemistry()  # 512 x 512: tiles start at 0, 128, 256
    predictor = TiledPredictor(model)
    predictor.set_image(image)
    predictor.predict(points=[[-0.4, 10]])
    assert predictor.last_tile == (0, 0, 256, 256)
    predictor.predict(box=[480, 100, 512, 150])
    assert predictor.last_tile == (256, 0, 512, 256)
    predictor.predict(points=[[255.7, 10]])  # pixel 256: not in the first tile row
    assert predictor.last_tile == (128, 0, 384, 256)


def test_bad_settings_and_order(model):
    for tile in (16, 128.5, True):
        with pytest.raises(ValueError, match="tile must be a whole number"):
            TiledPredictor(model, tile=tile)
    for overlap in (200, -1, 64.5):
        with pytest.raises(ValueError, match="overlap must be a whole number"):
            TiledPredictor(model, overlap=overlap)
    for max_tiles in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_tiles must be an integer"):
            TiledPredictor(model, max_tiles=max_tiles)
    with pytest.raises(RuntimeError, match="set_image"):
        TiledPredictor(model).predict(points=[[1, 1]])
