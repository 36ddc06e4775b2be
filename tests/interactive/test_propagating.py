"""The session's propagation: from the selected candidate, corrections on another slice,
nD data, divisions, one id per object in a commit."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import AnnotationSession, load_model
from tests.stand_ins import ellipsoid_stack
from tests.volume.test_propagation import dividing_movie, iou


@pytest.fixture(scope="module")
def model():
    return load_model("tiny_cells")


@pytest.fixture(scope="module")
def ellipsoid():
    return ellipsoid_stack(radii=(15, 20, 16))


def test_propagate_the_selected_candidate_and_commit_it_with_one_id(model, ellipsoid):
    volume, truth = ellipsoid
    session = AnnotationSession(model)
    session.set_image(volume, {0: 20})
    session.add_point((64, 64))
    selected = session.selected.mask
    (obj,) = session.propagate()
    assert np.array_equal(obj.planes[20], selected)  # the user's choice starts it
    assert not session.has_prompts  # consumed, like a commit
    assert iou(obj.mask, truth) > 0.7
    labels = np.zeros(volume.shape, np.uint16)
    labels[0, 0, 0] = 3  # an existing label stays
    ids = session.commit_propagation(labels)
    assert ids == [4]
    assert np.array_equal(labels == 4, obj.mask & ~((np.arange(40) == 0)[:, None, None]
                                                    & (labels == 3)))  # fmt: skip
    assert labels[0, 0, 0] == 3 and session.propagation is None
    assert session.last_lineage["label"].tolist() == [4]


def test_prompts_on_another_slice_correct_the_object_there(model, ellipsoid):
    volume, _truth = ellipsoid
    session = AnnotationSession(model)
    session.set_image(volume, {0: 20})
    session.add_point((64, 64))
    session.propagate()
    session.set_image(volume, {0: 30})  # scrolling keeps the propagation
    assert session.propagation is not None
    session.add_point((64, 64))
    # A click on the propagated object refines its mask there, not a fresh guess.
    assert session.propagated_logits((64, 64)) is not None
    corrected = session.selected.mask
    (obj,) = session.propagate()  # the same object, corrected on slice 30
    assert obj.prompted == (20, 30) and np.array_equal(obj.planes[30], corrected)
    assert len(session.propagation) == 1


def test_a_4d_image_propagates_along_z_within_its_time_point(model, ellipsoid):
    volume, _truth = ellipsoid
    movie = np.stack([volume[:, ::-1], volume])  # (T, Z, Y, X)
    session = AnnotationSession(model)
    session.set_image(movie, {0: 1, 1: 20})
    assert session.propagation_axes() == [0, 1]
    session.add_point((64, 64))
    (obj,) = session.propagate()  # default: z, the sliced axis next to the displayed ones
    assert obj.mask.shape == volume.shape
    labels = np.zeros(movie.shape, np.int32)
    session.commit_propagation(labels)
    assert not labels[0].any() and np.array_equal(labels[1] > 0, obj.mask)
    (along_t,) = (session.add_point((64, 64)), session.propagate(axis=0))[1]
    assert along_t.mask.shape == (2, 128, 128)


def test_divide_in_the_session(model):
    movie, _truth = dividing_movie()
    session = AnnotationSession(model)
    session.set_image(movie, {0: 0})
    session.add_point((64, 64))
    session.propagate()
    session.set_image(movie, {0: 10})
    session.add_point((48, 64))
    session.add_point((80, 64))
    daughters = session.divide()
    objects = session.propagate()  # no prompts: the daughters, queued, are tracked
    assert [objects[n].parent for n in daughters] == [0, 0]
    assert [objects[n].ends[0] for n in daughters] == ["division"] * 2
    labels = np.zeros(movie.shape, np.int32)
    ids = session.commit_propagation(labels)
    assert ids == [1, 2, 3]
    assert session.last_lineage["parent"].tolist() == [0, 1, 1]
    assert labels[9].max() == 1 and set(np.unique(labels[12])) == {0, 2, 3}


def test_propagation_errors(model, ellipsoid):
    volume, _ = ellipsoid
    session = AnnotationSession(model)
    session.set_image(volume[20])
    session.add_point((64, 64))
    with pytest.raises(ValueError, match="no sliced axis"):
        session.propagate()
    session.set_image(volume, {0: 20})
    with pytest.raises(ValueError, match="Nothing to propagate"):
        session.propagate()
    session.add_point((64, 64))
    with pytest.raises(ValueError, match="not a sliced axis"):
        session.propagate(axis=2)
    with pytest.raises(ValueError, match="Nothing propagated"):
        session.commit_propagation(np.zeros(volume.shape, np.int32))
    with pytest.raises(ValueError, match="Propagate the object first"):
        session.divide()


def test_one_object_per_box_propagates_every_box_together(model):
    from tests.stand_ins import touching_spheres

    volume, truth = touching_spheres()
    session = AnnotationSession(model)
    session.one_object_per_box = True
    session.set_image(volume, {0: 12})
    for label in (1, 2):
        rows, cols = np.nonzero(truth[12] == label)
        session.add_box((rows.min(), cols.min(), rows.max(), cols.max()))
    objects = session.propagate()
    assert len(objects) == 2 and not np.logical_and(objects[0].mask, objects[1].mask).any()
    for label, obj in zip((1, 2), objects, strict=True):
        assert iou(obj.mask, truth == label) > 0.6
    # A negative point on one of them cuts its mask there (its logits were made up).
    session.set_image(volume, {0: 14})
    rows, cols = np.nonzero(objects[0].planes[14])
    session.add_point((rows.mean(), cols.mean()), positive=False)
    assert session.propagated_logits(session.points) is not None
    assert session.candidates


def test_a_cancelled_propagation_goes_on_and_another_image_cannot_commit_it(model, ellipsoid):
    from napari_sam.volume import PropagationCancelled

    volume, _ = ellipsoid
    session = AnnotationSession(model)
    session.set_image(volume, {0: 20})
    session.add_point((64, 64))
    calls = []
    with pytest.raises(PropagationCancelled):
        session.propagate(cancelled=lambda: calls.append(1) or len(calls) > 3)
    (partial,) = session.propagation.objects
    assert session.propagation.pending and len(partial.slices) < 8
    (whole,) = session.propagate()  # no prompts: goes on where it stopped
    assert len(whole.slices) > 20 and not session.propagation.pending
    session.set_image(volume[:, ::-1].copy(), {0: 20})
    assert not session.propagation_on_this_image
    with pytest.raises(ValueError, match="another image"):
        session.commit_propagation(np.zeros(volume.shape, np.int32))
