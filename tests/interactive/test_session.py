"""AnnotationSession, the Qt-free click -> candidates -> commit loop, on numpy arrays:
the flows the widget tests check through napari, here without a viewer."""

import numpy as np
import pytest

from napari_sam import AnnotationSession, SamPredictor
from napari_sam.interactive import CommitError
from napari_sam.view import ViewSpec
from tests.stand_ins import coins, disc_model


@pytest.fixture(scope="module")
def model():
    return disc_model()


@pytest.fixture
def session(model):
    session = AnnotationSession(model)
    session.set_image(coins())
    return session


def test_the_documented_loop_runs_as_written():
    from napari_sam import load_model

    image = coins()
    session = AnnotationSession(load_model("tiny_cells"))
    session.set_image(image)
    session.add_point((150, 190))
    assert [c.name for c in session.candidates] == ["whole", "part", "subpart"]
    session.select("part")
    labels = np.zeros(image.shape, np.int32)
    new_ids = session.commit(labels)
    assert new_ids == [1] and labels[150, 190] == 1
    assert (labels == 1).sum() == session_area(labels)
    assert not session.has_prompts and session.candidates == []
    session.add_box((100, 150, 200, 230))
    session.clear()
    assert not session.has_prompts


def session_area(labels):
    return int((labels > 0).sum())


def test_one_point_gives_three_nested_candidates_and_the_best_preselected(session):
    session.add_point((150, 190))
    names = [c.name for c in session.candidates]
    areas = [c.area for c in session.candidates]
    assert names == ["whole", "part", "subpart"] and areas[0] > areas[1] > areas[2] > 0
    assert session.selected.name == "part"  # the disc decoder's highest predicted IoU
    assert all(c.mask[150, 190] for c in session.candidates)


def test_select_by_name_or_index_and_cycle(session):
    session.add_point((150, 190))
    assert session.select("whole").name == "whole"
    assert session.select(2).name == "subpart"
    assert session.next_candidate().name == "whole"
    with pytest.raises(ValueError, match="No candidate 'tiny'"):
        session.select("tiny")


def test_select_without_prompts_says_what_to_do(session):
    with pytest.raises(ValueError, match="add a prompt first"):
        session.select("part")


def test_prompts_that_only_grow_refine_with_the_selected_logits(session, monkeypatch):
    seen = []
    original = SamPredictor.predict

    def spy(self, **kwargs):
        seen.append(kwargs["mask_input"])
        return original(self, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict", spy)
    session.add_point((150, 190))
    session.candidates  # noqa: B018
    chosen = session.select("whole").logits
    session.add_point((20, 20), positive=False)
    session.candidates  # noqa: B018
    session.set_prompts([(150, 190)], [1])  # not grown: a point removed
    session.candidates  # noqa: B018
    assert seen[0] is None and seen[2] is None
    np.testing.assert_array_equal(seen[1], chosen)


def test_a_negative_point_cuts_the_mask(session):
    session.add_point((150, 190))
    whole = session.select("whole").mask
    session.add_point((150, 200), positive=False)
    (mask,) = [c.mask for c in session.candidates]
    assert whole[150, 200] and not mask[150, 200] and mask[150, 170]


def test_per_box_mode_commits_one_object_per_box_with_fresh_ids(session):
    session.one_object_per_box = True
    session.add_box((10, 10, 60, 60))
    session.add_box((100, 100, 160, 160))
    assert [c.name for c in session.candidates] == ["box 1", "box 2"]
    labels = np.zeros(coins().shape, np.uint16)
    labels[0, 0] = 7  # a label the user made: new ids start above it
    assert session.commit(labels) == [8, 9]
    assert labels[30, 30] == 8 and labels[130, 130] == 9 and labels[0, 0] == 7
    assert not session.has_prompts


def test_commit_never_overwrites_unless_asked(session):
    labels = np.zeros(coins().shape, np.int32)
    labels[150, 190] = 5
    session.add_point((150, 190))
    assert session.commit(labels) == [6]
    assert labels[150, 190] == 5 and labels[150, 195] == 6
    session.add_point((150, 190))
    assert session.commit(labels, overwrite=True) == [7]
    assert labels[150, 190] == 7


def test_ids_that_do_not_fit_the_dtype_write_nothing_and_keep_prompts(session):
    labels = np.zeros(coins().shape, np.uint8)
    labels[0, 0] = 254
    session.one_object_per_box = True
    for k in range(3):
        session.add_box((10 + 40 * k, 10, 40 + 40 * k, 40))
    with pytest.raises(CommitError, match="uint8"):
        session.commit(labels)
    assert labels.max() == 254 and (labels > 0).sum() == 1
    assert len(session.boxes) == 3


def test_arrays_that_cannot_be_written_in_place_are_refused(session):
    import dask.array as da

    session.add_point((150, 190))
    with pytest.raises(CommitError, match="in-memory numpy"):
        session.commit(da.zeros(coins().shape, dtype=np.int32))
    read_only = np.zeros(coins().shape, np.int32)
    read_only.flags.writeable = False
    with pytest.raises(CommitError, match="read-only"):
        session.commit(read_only)
    assert session.has_prompts


def test_frames_land_the_mask_under_the_object_in_world_space(session):
    # Image at scale 2: its pixel (150, 190) is world (300, 380), labels pixel (300, 380).
    session.add_point((150, 190))
    labels = np.zeros((2 * 303, 2 * 384), np.int32)
    session.commit(labels, image_to_world=np.diag([2.0, 2.0, 1.0]))
    assert labels[300, 380] == 1 and labels[150, 190] == 0


def test_a_slice_of_a_stack_with_a_channel_choice(model):
    stack = np.stack([coins(), coins()[::-1], np.zeros_like(coins())])  # (Z, Y, X)
    session = AnnotationSession(model)
    session.set_image(stack, {0: 1})
    assert session.view == ViewSpec((1, 2), {0: 1})
    np.testing.assert_array_equal(session.read_view()[0], stack[1])
    session.add_point((150, 190))
    labels = np.zeros(stack.shape, np.int32)
    assert session.commit(labels) == [1]
    assert labels[1, 150, 190] == 1 and not labels[0].any() and not labels[2].any()
    channels = np.stack([coins(), coins()[::-1]], axis=-1)  # (Y, X, C)
    session.set_image(channels, channel_axis=2, channels=[1])
    np.testing.assert_array_equal(session.read_view()[0], coins()[::-1])


def test_a_new_view_drops_the_prompts_of_the_old_one(model):
    stack = np.stack([coins(), coins()])
    session = AnnotationSession(model)
    session.set_image(stack, {0: 0})
    session.add_point((150, 190))
    session.set_image(stack, {0: 0})  # the same view: prompts stay
    assert session.has_prompts
    session.set_image(stack, {0: 1})
    assert not session.has_prompts and session.candidates == []


def test_embeddings_are_cached_and_pixels_edited_in_place_embedded_again(model, monkeypatch):
    import napari_sam.predictor as predictor

    calls = []
    original = predictor.embed_image
    monkeypatch.setattr(predictor, "embed_image",
                        lambda *a, **k: calls.append(1) or original(*a, **k))  # fmt: skip
    image = coins().copy()
    session = AnnotationSession(model)
    session.set_image(image)
    session.add_point((150, 190))
    session.candidates  # noqa: B018
    other = AnnotationSession(model, cache=session.cache)
    other.set_image(image.copy())  # same pixels, another array: the cache has it
    other.add_point((100, 100))
    other.candidates  # noqa: B018
    assert len(calls) == 1
    image[:] = image[::-1].copy()  # edited in place
    session.add_point((20, 20))
    session.candidates  # noqa: B018
    assert len(calls) == 2


def test_lazy_data_is_read_by_the_embedding_job(model):
    import dask.array as da

    stack = np.stack([coins(), coins()[::-1]])
    session = AnnotationSession(model)
    session.set_image(da.from_array(stack, chunks=(1, 64, 64)), {0: 1})
    assert session.is_lazy and session.embedding_key() is None  # nothing read yet
    result = session.embedding_job()()  # what a worker thread runs
    assert session.store_embedding(result) and session.has_embedding
    session.add_point((150, 190))
    assert session.candidates


def test_an_embedding_from_an_older_model_is_not_kept(model):
    session = AnnotationSession(model)
    session.set_image(coins())
    job = session.embedding_job()
    session.set_model(disc_model(seed=2))
    assert not session.store_embedding(job()) and not session.has_embedding


def test_errors_say_what_to_do(model):
    session = AnnotationSession()
    session.set_image(coins())
    session.add_point((1, 1))
    with pytest.raises(ValueError, match="No model"):
        session.predict()
    with pytest.raises(ValueError, match="set_image"):
        AnnotationSession(model).embedding_job()
    with pytest.raises(ValueError, match="NaN"):
        session.add_point((np.nan, 3))
    with pytest.raises(ValueError, match="Nothing to commit"):
        AnnotationSession(model).plan_commit(np.zeros((3, 3), np.int32))


@pytest.mark.parametrize(
    ("shape", "view", "match"),
    [
        ((5, 40, 50), None, "view=\\{0: 12\\}"),  # a stack without a slice: not slice 0
        ((40, 50, 2), None, "channel_axis=2"),  # two channels are neither gray nor RGB
        ((5, 40, 50, 3), None, "give the index"),  # an RGB stack without a slice
        ((2, 3, 40, 50), {0: 1}, "give the index of 1 more"),
    ],
)
def test_an_image_without_a_view_for_every_extra_axis_is_refused(model, shape, view, match):
    session = AnnotationSession(model)
    with pytest.raises(ValueError, match=match):
        session.set_image(np.zeros(shape, np.uint8), view)


def test_an_rgb_stack_slice_and_a_last_channel_axis_read_the_right_pixels(model):
    rgb_stack = np.random.default_rng(0).integers(0, 255, (3, 40, 50, 3), dtype=np.uint8)
    session = AnnotationSession(model)
    session.set_image(rgb_stack, {0: 1})
    np.testing.assert_array_equal(session.read_view()[0], rgb_stack[1])
    hwc = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for axis in (2, -1):  # (H, W, C), the common microscopy layout
        session.set_image(hwc, channel_axis=axis, channels=[1])
        np.testing.assert_array_equal(session.read_view()[0], hwc[..., 1])


@pytest.mark.parametrize("shape", [(303, 50), (100, 100), (2, 303, 384)])
def test_labels_of_another_shape_without_frames_are_refused_not_clipped(session, shape):
    session.add_point((150, 190))
    labels = np.zeros(shape, np.int32)
    with pytest.raises(ValueError, match="match neither the image"):
        session.commit(labels)
    assert not labels.any() and session.has_prompts


def test_a_new_model_decodes_the_prompts_there_are(session):
    session.add_point((150, 190))
    assert len(session.candidates) == 3
    session.set_model(disc_model(seed=2))
    assert session.has_prompts and [c.name for c in session.candidates] == [
        "whole",
        "part",
        "subpart",
    ]
    assert session.commit(np.zeros(coins().shape, np.int32)) == [1]


def test_encoder_weights_changed_in_place_are_not_served_old_embeddings(model):
    import torch

    from napari_sam.model import build_sam
    from tests.reference import TINY, randomize_

    own = randomize_(build_sam(TINY).eval(), seed=3)  # this test edits its weights
    session = AnnotationSession(own, tiled=False)  # the whole view's embedding
    session.set_image(coins())
    session.compute_embedding()
    before = session.embedding_for(session.embedding_key()).features.clone()
    with torch.no_grad():  # what fine-tuning the model in use does
        next(own.image_encoder.parameters()).mul_(1.5)
    assert not session.has_embedding
    session.compute_embedding()
    after = session.embedding_for(session.embedding_key()).features
    assert not torch.allclose(before, after)


def test_points_outside_the_view_are_refused_with_where_they_are(session):
    """From a new user's break test: (-500, -500) on a 303 x 384 view gave a 14,000 px
    'whole' mask and no message (in napari: points left from another image)."""
    for point in ((-500, -500), (2000, 100), (302.5, 10), (10, -0.6)):
        with pytest.raises(ValueError, match="outside the view of 303 x 384 pixels"):
            session.add_point(point)
    assert not session.has_prompts
    for point in ((-0.5, 0), (302.4, 383.4)):  # on the first and the last pixel
        session.add_point(point)
    assert len(session.candidates) == 1  # two points: one mask


def test_unclear_inputs_get_errors_that_say_what_to_pass(session, model):
    with pytest.raises(ValueError, match=r"\(row, col\)"):
        session.add_point((2, 137, 73))  # (z, row, col) of a stack
    session.add_point((150, 190))
    for which in (True, 1.0, None):
        with pytest.raises(ValueError, match="by name"):
            session.select(which)
    with pytest.raises(ValueError, match="empty"):
        AnnotationSession(model).set_image(np.zeros((0, 5)))
    with pytest.raises(CommitError, match="integer ids"):
        session.commit(np.zeros(coins().shape, np.float32))
