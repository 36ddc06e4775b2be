"""Propagation through stacks with the bundled model: quality against clicking every slice,
both directions, the stop rule, corrections, many objects, divisions, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import SamPredictor, load_model
from napari_sam.volume import (
    Propagation,
    PropagationSettings,
    SliceStack,
    StopRule,
    embed_slices,
    lineage_table,
    propagate,
    propagate_objects,
    write_lineage_csv,
)
from tests.stand_ins import ellipsoid_stack, moving_disc_movie, touching_spheres


def iou(a, b) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


@pytest.fixture(scope="module")
def model():
    return load_model("tiny_cells")


@pytest.fixture(scope="module")
def ellipsoid(model):
    volume, truth = ellipsoid_stack(radii=(15, 20, 16))
    return volume, truth, embed_slices(model, volume)


def clicked_every_slice(model, truth, embeddings):
    """What clicking the centre of the object on every slice gives (preselected)."""
    predictor, found = SamPredictor(model), np.zeros_like(truth)
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        rows, cols = np.nonzero(truth[z])
        predictor.image_embedding = embeddings[z]
        masks, scores, _ = predictor.predict(points=[[rows.mean(), cols.mean()]])
        found[z] = masks[int(np.argmax(scores))]
    return found


def test_one_click_propagates_both_ways_as_well_as_clicking_every_slice(model, ellipsoid):
    volume, truth, embeddings = ellipsoid
    obj = propagate(model, volume, 20, points=[[64, 64]], embeddings=embeddings)
    assert obj.mask.shape == volume.shape and obj.mask.dtype == bool
    assert obj.slices[0] < 14 and obj.slices[-1] > 26  # both directions, far
    by_hand = iou(clicked_every_slice(model, truth, embeddings), truth)
    # Measured 0.78 against 0.79 by hand (benchmarks/bench_propagate.py): the bundled
    # model caps both; the 0.9 goal needs a better 2D model (issue 17).
    assert iou(obj.mask, truth) >= by_hand - 0.03
    assert iou(obj.mask, truth) >= 0.7
    present = ~np.isnan(obj.scores)
    assert np.array_equal(np.flatnonzero(present), obj.slices)
    assert obj.prompted == (20,)


def test_the_stop_rule_ends_the_object_near_where_it_ends(model, ellipsoid):
    volume, truth, embeddings = ellipsoid
    obj = propagate(model, volume, 20, points=[[64, 64]], embeddings=embeddings)
    first, last = np.flatnonzero(truth.any(axis=(1, 2)))[[0, -1]]  # 5, 35
    assert first - 1 <= obj.slices[0] <= first + 3 and last - 3 <= obj.slices[-1] <= last + 1
    assert all(end.startswith("the area changed") for end in obj.ends), obj.ends
    # Without a stop rule the (weak) model finds "the object" on every slice.
    never = StopRule(min_overlap=0.0, max_area_change=1e9, min_area=1)
    endless = propagate(model, volume, 20, points=[[64, 64]], embeddings=embeddings,
                        settings=PropagationSettings(stop=never))  # fmt: skip
    assert endless.slices == list(range(len(volume))) and endless.ends == ("end of stack",) * 2


def test_stop_rule_reasons():
    rule = StopRule(min_score=0.5, min_stability=0.5, min_overlap=0.5, max_area_change=2.0,
                    min_area=10)  # fmt: skip
    good = dict(score=0.9, stability=0.9, overlap=0.9, area=100, previous_area=100)
    assert rule.why_stop(**good) is None
    assert "smaller" in rule.why_stop(**{**good, "area": 5})
    assert "predicted IoU" in rule.why_stop(**{**good, "score": 0.2})
    assert "stability" in rule.why_stop(**{**good, "stability": 0.2})
    assert "overlap" in rule.why_stop(**{**good, "overlap": 0.2})
    assert "area changed" in rule.why_stop(**{**good, "area": 250})
    assert "area changed" in rule.why_stop(**{**good, "area": 40})


def test_precomputed_embeddings_are_used_not_recomputed(model, ellipsoid, monkeypatch):
    volume, _, embeddings = ellipsoid

    def no_encoder(*args, **kwargs):
        raise AssertionError("the image encoder ran")

    monkeypatch.setattr(model, "encode_image", no_encoder)
    obj = propagate(model, volume, 20, points=[[64, 64]], embeddings=embeddings)
    assert len(obj.slices) > 20


def test_another_stack_axis_gives_the_same_object_in_the_data_axis_order(model, ellipsoid):
    volume, _, embeddings = ellipsoid
    along_z = propagate(model, volume, 20, points=[[64, 64]], embeddings=embeddings)
    moved = np.moveaxis(volume, 0, 2)  # (Y, X, Z)
    along_last = propagate(model, moved, 20, points=[[64, 64]], axis=2)
    assert along_last.mask.shape == moved.shape
    assert np.array_equal(np.moveaxis(along_last.mask, 2, 0), along_z.mask)


def test_rgb_and_lazy_volumes(model, ellipsoid):
    dask = pytest.importorskip("dask.array")
    volume, truth, _ = ellipsoid
    small = volume[14:27]
    rgb = np.repeat(small[..., None], 3, axis=-1)
    gray = propagate(model, small, 6, points=[[64, 64]])
    coloured = propagate(model, rgb, 6, points=[[64, 64]])
    lazy = propagate(model, dask.from_array(small, chunks=(1, 128, 128)), 6, points=[[64, 64]])
    assert coloured.mask.shape == small.shape and np.array_equal(coloured.mask, gray.mask)
    assert np.array_equal(lazy.mask, gray.mask)
    assert iou(gray.mask, truth[14:27]) > 0.6


def test_a_moving_disc_is_tracked_with_one_object_through_every_frame(model):
    movie, truth = moving_disc_movie()
    embeddings = embed_slices(model, movie)
    obj = propagate(model, movie, 0, points=[[30, 30]], embeddings=embeddings)
    assert obj.slices == list(range(24))
    by_hand = iou(clicked_every_slice(model, truth, embeddings), truth)
    assert iou(obj.mask, truth) >= by_hand - 0.03 and iou(obj.mask, truth) >= 0.65
    # It follows the disc: the centre of every frame's mask is near the disc's centre.
    for t in range(24):
        found = np.argwhere(obj.mask[t]).mean(axis=0)
        assert np.abs(found - (30 + 2 * t, 30 + 3 * t)).max() < 8, t


def test_touching_objects_propagated_together_do_not_merge(model):
    volume, truth = touching_spheres()
    left, right = [np.argwhere(truth[12] == label).mean(axis=0) for label in (1, 2)]
    objects = propagate_objects(model, volume, 12, points=[left, right])
    assert len(objects) == 2
    assert not np.logical_and(objects[0].mask, objects[1].mask).any()
    for label, obj in zip((1, 2), objects, strict=True):
        assert iou(obj.mask, truth == label) > 0.7
        other = truth == 3 - label
        assert np.logical_and(obj.mask, other).sum() < 0.1 * other.sum()


def test_far_apart_objects_propagated_together_are_as_if_alone(model, ellipsoid):
    volume, _, _ = ellipsoid
    wide = np.concatenate([volume, volume[:, :, ::-1]], axis=2)  # two ellipsoids, 128 apart
    embeddings = embed_slices(model, wide)
    together = propagate_objects(model, wide, 20, points=[[64, 64], [64, 191]],
                                 embeddings=embeddings)  # fmt: skip
    for obj, point in zip(together, ([64, 64], [64, 191]), strict=True):
        alone = propagate(model, wide, 20, points=[point], embeddings=embeddings)
        assert obj.slices == alone.slices and np.array_equal(obj.mask, alone.mask)


def test_a_correction_is_kept_and_propagated_outward(model, ellipsoid):
    volume, truth, embeddings = ellipsoid
    stack = SliceStack.of_volume(model, volume, embeddings=embeddings)
    engine = Propagation(stack)
    (number,) = engine.add_objects(20, points=[[64, 64]])
    before = engine.run()[0]
    engine.correct(number, 26, mask=truth[26])  # the user's mask on slice 26
    after = engine.run()[0]
    assert np.array_equal(after.planes[26], truth[26])
    assert after.prompted == (20, 26)
    assert np.array_equal(after.planes[20], before.planes[20])  # the first prompt's slice
    assert any(not np.array_equal(after.planes.get(z), before.planes.get(z)) for z in
               range(27, 36))  # re-propagated beyond the correction  # fmt: skip
    # A second correction further out keeps the first one.
    engine.correct(number, 30, points=[[64, 64]])
    again = engine.run()[0]
    assert np.array_equal(again.planes[26], truth[26]) and again.prompted == (20, 26, 30)


def dividing_movie(frames=20, split=10, size=128, radius=14):
    """A disc that divides at frame `split` into two discs moving apart along rows."""
    rng = np.random.default_rng(1)
    y, x = np.ogrid[:size, :size]
    truth = np.zeros((frames, size, size), np.int32)
    for t in range(frames):
        centres = [(64, 64)] if t < split else [(64 - 3 * (t - split) - 16, 64),
                                                 (64 + 3 * (t - split) + 16, 64)]  # fmt: skip
        for label, (r, c) in enumerate(centres, start=1 if t < split else 2):
            truth[t][(y - r) ** 2 + (x - c) ** 2 <= radius**2] = label
    image = np.where(truth > 0, 180.0, 50.0) + rng.normal(0, 15, truth.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_a_division_ends_the_parent_and_starts_two_daughters_with_a_lineage(model, tmp_path):
    movie, truth = dividing_movie()
    engine = Propagation(SliceStack.of_volume(model, movie))
    (parent,) = engine.add_objects(0, points=[[64, 64]])
    engine.run()
    daughters = engine.divide(parent, 10, [[48, 64], [80, 64]])
    objects = engine.run()
    assert objects[parent].slices == list(range(10)) and objects[parent].ends[1] == "division"
    for number, label in zip(daughters, (2, 3), strict=True):
        assert objects[number].parent == parent
        assert objects[number].slices[0] == 10
        assert iou(objects[number].mask[10:], truth[10:] == label) > 0.6
    table = lineage_table(objects, {parent: 7, daughters[0]: 8, daughters[1]: 9})
    assert table["label"].tolist() == [7, 8, 9] and table["parent"].tolist() == [0, 7, 7]
    assert table["first_frame"].tolist()[0] == 0 and table["last_frame"].tolist()[0] == 9
    path = write_lineage_csv(tmp_path / "lineage.csv", table)
    lines = path.read_text().splitlines()
    assert lines[0] == "label,parent,first_frame,last_frame" and lines[2].startswith("8,7,10,")
    with pytest.raises(FileExistsError):
        write_lineage_csv(path, table)


def test_bad_input_says_what_to_do(model, ellipsoid):
    volume, _, embeddings = ellipsoid
    with pytest.raises(ValueError, match="needs a stack"):
        propagate(model, volume[0], 0, points=[[5, 5]])
    with pytest.raises(ValueError, match="movie"):
        propagate(model, volume[None].repeat(2, axis=0), 0, points=[[5, 5]])
    with pytest.raises(ValueError, match="outside the stack"):
        propagate(model, volume, 40, points=[[5, 5]], embeddings=embeddings)
    with pytest.raises(ValueError, match="outside the stack"):
        propagate(model, volume, -1, points=[[5, 5]], embeddings=embeddings)
    with pytest.raises(ValueError, match="outside the slice"):
        propagate(model, volume, 20, points=[[64, 300]], embeddings=embeddings)
    with pytest.raises(ValueError, match="points, boxes or masks"):
        propagate(model, volume, 20, embeddings=embeddings)
    with pytest.raises(ValueError, match="axis"):
        propagate(model, volume, 20, points=[[5, 5]], axis=3)
    with pytest.raises(ValueError, match="empty mask"):
        propagate(model, volume, 20, mask=np.zeros((128, 128), bool), embeddings=embeddings)
    with pytest.raises(ValueError, match="at least one"):
        PropagationSettings(use_mask=False, use_box=False, use_point=False)
    for bad, match in [
        (dict(points=[]), "Points are"),
        (dict(points=[[12, 39, 87]]), "Points are"),
        (dict(box=(1, 2, 3)), "A box is"),
        (dict(box=(200, 200, 300, 300)), "outside the slice"),
        (dict(points=[[64, 64]], labels=[0]), "positive point"),
    ]:
        with pytest.raises(ValueError, match=match):
            propagate(model, volume, 20, embeddings=embeddings, **bad)
    with pytest.raises(ValueError, match="rgb=True"):
        propagate(model, volume, 20, points=[[5, 5]], rgb=True)


def test_embeddings_of_other_pixels_or_axes_are_refused(model, ellipsoid):
    volume, _, embeddings = ellipsoid
    assert embed_slices(model, volume[:3], indices=[]) == {}
    flipped = embed_slices(model, volume[::-1].copy(), indices=[19, 20, 21])
    with pytest.raises(ValueError, match="other pixels"):
        propagate(model, volume, 20, points=[[64, 64]], embeddings=flipped)
    sideways = embed_slices(model, volume[:, :, :40], axis=1, indices=[0])
    with pytest.raises(ValueError, match="axis 0"):
        propagate(model, volume[:, :, :40], 20, points=[[5, 5]], embeddings=sideways)
    with pytest.raises(ValueError, match="ImageEmbedding"):
        propagate(model, volume, 20, points=[[5, 5]], embeddings=[1, 2])
    assert "slices" in repr(embeddings) and "VolumeObject(slices" in repr(
        propagate(model, volume, 20, points=[[64, 64]], embeddings=embeddings))
