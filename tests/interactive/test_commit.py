"""Committing view masks into labels arrays in other frames, with ids that fit."""

import numpy as np
import pytest

from napari_sam.interactive.commit import (
    CommitError,
    mask_to_labels_indices,
    plan_commit,
    unwritable_reason,
    view_to_labels,
)
from napari_sam.interactive.prompts import affine_matrix
from napari_sam.view import ViewSpec


def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def paint(shape, indices, value=1):
    out = np.zeros(shape, np.int32)
    out[indices] = value
    return out


def world_of(matrix, coords):
    coords = np.asarray(coords, float)
    return coords @ matrix[:-1, :-1].T + matrix[:-1, -1]


def test_same_frame_writes_exactly_the_mask_pixels():
    mask = disc((60, 80), (30, 40), 12)
    view = ViewSpec((0, 1), {})
    identity = affine_matrix(2)
    mapping = view_to_labels(view, identity, identity, 2)
    got = paint((60, 80), mask_to_labels_indices(mask, mapping, (60, 80)))
    np.testing.assert_array_equal(got, mask.astype(np.int32))


def test_scaled_translated_image_lands_under_the_object_in_world_space():
    # The case: image at scale (0.5, 0.25), translate (10, 20); labels at scale 1.
    mask = disc((200, 400), (100, 200), 60)
    image_to_world = affine_matrix(2, scale=(0.5, 0.25), translate=(10, 20))
    labels_to_world = affine_matrix(2)
    mapping = view_to_labels(ViewSpec((0, 1), {}), image_to_world, labels_to_world, 2)
    labels = paint((200, 400), mask_to_labels_indices(mask, mapping, (200, 400)))
    # The object's world extent: rows 10 + 0.5 * (40..160), cols 20 + 0.25 * (140..260).
    rows, cols = np.nonzero(labels)
    assert rows.min() >= 29 and rows.max() <= 91 and cols.min() >= 54 and cols.max() <= 86
    # Every written pixel's centre lies in a mask pixel, and the area matches the world area.
    image_rc = np.floor(world_of(np.linalg.inv(image_to_world), np.c_[rows, cols]) + 0.5)
    assert mask[image_rc[:, 0].astype(int), image_rc[:, 1].astype(int)].all()
    assert abs(labels.sum() - mask.sum() * 0.5 * 0.25) < 0.08 * mask.sum() * 0.125
    # Written at pixel indices instead (the bug), it would cover the image's own disc.
    assert not labels[100, 200]


def test_finer_labels_rotated_image_and_transposed_view():
    mask = np.zeros((50, 70), bool)
    mask[10:20, 30:60] = True  # a 10 x 30 bar
    rotate = np.array([[0.0, -1.0], [1.0, 0.0]])  # 90 degrees
    image_to_world = affine_matrix(2, linear=rotate, translate=(100, 0))
    labels_to_world = affine_matrix(2, scale=(0.5, 0.5))
    mapping = view_to_labels(ViewSpec((0, 1), {}), image_to_world, labels_to_world, 2)
    labels = paint((400, 400), mask_to_labels_indices(mask, mapping, (400, 400)))
    rows, cols = np.nonzero(labels)
    # Rotated, the bar is 30 tall and 10 wide in world units: 60 x 20 labels pixels.
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (60, 20)
    assert labels.sum() == 60 * 20
    # The same view shown transposed (displayed axes (1, 0)) writes the same pixels.
    transposed = view_to_labels(ViewSpec((1, 0), {}), image_to_world, labels_to_world, 2)
    again = paint((400, 400), mask_to_labels_indices(mask.T, transposed, (400, 400)))
    np.testing.assert_array_equal(again, labels)


def test_slices_of_stacks_in_other_frames():
    mask = disc((40, 40), (20, 20), 8)
    # A 3D image whose z spacing is 2, labels with z spacing 1: slice 3 -> labels plane 6.
    image_to_world = affine_matrix(3, scale=(2, 1, 1))
    labels_to_world = affine_matrix(3)
    mapping = view_to_labels(ViewSpec((1, 2), {0: 3}), image_to_world, labels_to_world, 3)
    indices = mask_to_labels_indices(mask, mapping, (10, 40, 40))
    assert set(indices[0].tolist()) == {6}
    # A 2D labels layer under the 3D image takes the plane on screen.
    mapping = view_to_labels(ViewSpec((1, 2), {0: 3}), image_to_world, affine_matrix(2), 2)
    np.testing.assert_array_equal(
        paint((40, 40), mask_to_labels_indices(mask, mapping, (40, 40))), mask.astype(int)
    )
    # A 3D labels layer over a 2D image: the slider position picks the plane.
    mapping = view_to_labels(
        ViewSpec((0, 1), {}), affine_matrix(2), affine_matrix(3), 3, world_point=(4.2, 0, 0)
    )
    assert set(mask_to_labels_indices(mask, mapping, (10, 40, 40))[0].tolist()) == {4}
    # The slice on screen outside the labels' planes: refused.
    mapping = view_to_labels(ViewSpec((1, 2), {0: 9}), image_to_world, labels_to_world, 3)
    with pytest.raises(CommitError, match="outside the labels layer"):
        mask_to_labels_indices(mask, mapping, (10, 40, 40))


def test_a_plane_tilted_across_the_labels_axes_is_refused():
    angle = np.deg2rad(30)
    tilt = np.eye(3)
    tilt[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    image_to_world = affine_matrix(3, linear=tilt)
    mapping = view_to_labels(ViewSpec((1, 2), {0: 3}), image_to_world, affine_matrix(3), 3)
    with pytest.raises(CommitError, match="not a plane of the labels"):
        mask_to_labels_indices(disc((40, 40), (20, 20), 8), mapping, (10, 40, 40))


def test_plan_refuses_ids_beyond_the_dtype_and_writes_nothing():
    labels = np.zeros((60, 60), np.uint8)
    labels[0, 0] = 253
    masks = [disc((60, 60), (15 + 30 * (i // 2), 15 + 30 * (i % 2)), 6) for i in range(4)]
    mapping = view_to_labels(ViewSpec((0, 1), {}), affine_matrix(2), affine_matrix(2), 2)
    before = labels.copy()
    with pytest.raises(CommitError, match=r"uint8 holds ids up to 255.*254 to 257"):
        plan_commit(masks, labels, mapping)
    np.testing.assert_array_equal(labels, before)
    assert plan_commit(masks[:2], labels, mapping).ids == [254, 255]


def test_plan_keeps_existing_labels_and_earlier_masks_of_the_batch():
    labels = np.zeros((40, 40), np.int32)
    labels[:, :10] = 7
    first = np.zeros((40, 40), bool)
    first[5:20, 5:30] = True
    second = np.zeros((40, 40), bool)
    second[10:30, 15:35] = True
    mapping = view_to_labels(ViewSpec((0, 1), {}), affine_matrix(2), affine_matrix(2), 2)
    plan = plan_commit([first, second, first & ~first], labels, mapping)
    assert plan.ids == [8, 9] and plan.outside == 1
    for indices, label_id in plan.writes:
        labels[indices] = label_id
    assert (labels[:, :10] == 7).all()
    assert (labels[5:20, 10:30] == 8).all()  # the earlier mask keeps its overlap
    assert (labels[20:30, 15:35] == 9).all() and (labels[10:20, 30:35] == 9).all()
    covered = plan_commit([first & (labels == 8)], labels, mapping)
    assert covered.ids == [] and covered.covered == 1
    overwrite = plan_commit([second], labels, mapping, overwrite=True)
    assert overwrite.ids == [10] and len(overwrite.writes[0][0][0]) == second.sum()


def test_unwritable_labels_are_named():
    import dask.array as da

    assert unwritable_reason(np.zeros((4, 4), np.int32)) is None
    assert "dask.Array" in unwritable_reason(da.zeros((4, 4), dtype=np.int32))
    frozen = np.zeros((4, 4), np.int32)
    frozen.flags.writeable = False
    assert "read-only" in unwritable_reason(frozen)
    assert "multiscale" in unwritable_reason([np.zeros((4, 4))], multiscale=True)
    assert "float64" in unwritable_reason(np.zeros((4, 4)))
