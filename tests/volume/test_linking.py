"""Linking per-slice objects into 3D objects by overlap (IoU + Hungarian assignment)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_sam.volume.linking import link_slices, linking_axes


def fresh_ids_per_slice(truth: np.ndarray, rng, first=1, step=1) -> np.ndarray:
    """The ground-truth objects of each z slice under new random ids, unique across slices
    (as segment everything gives them): first + step * (a permutation index)."""
    out = np.zeros(truth.shape, np.int64)
    objects = np.unique(truth[truth > 0])
    ids = first + step * rng.permutation(len(truth) * len(objects))
    for z, plane in enumerate(truth):
        for i, obj in enumerate(objects):
            out[z][plane == obj] = ids[z * len(objects) + i]
    return out


def two_touching_spheres(depth=17, radius=14.0) -> np.ndarray:
    """(Z, Y, X) ground truth: two balls side by side that touch (the first
    takes the pixels of both) in every slice, the
    stack spanning their middle third (where consecutive cross-sections overlap well)."""
    z, y, x = np.mgrid[:depth, :40, :70].astype(float)
    dz = z - depth // 2
    first = dz**2 + (y - 20) ** 2 + (x - 20) ** 2 <= radius**2
    second = dz**2 + (y - 20) ** 2 + (x - 42) ** 2 <= radius**2
    truth = np.zeros(z.shape, np.int32)
    truth[first] = 1
    truth[second & ~first] = 2
    assert ((truth[:, :, :-1] == 1) & (truth[:, :, 1:] == 2)).any(axis=(1, 2)).all()
    return truth


def assert_same_objects(linked: np.ndarray, truth: np.ndarray) -> None:
    """Each true object is exactly one linked id and each linked id one true object."""
    assert ((linked > 0) == (truth > 0)).all()
    inside = truth > 0
    pairs = {(int(a), int(b)) for a, b in zip(truth[inside], linked[inside], strict=True)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize(
    ("dtype", "first", "step"),
    [(np.uint16, 1, 1), (np.int32, 5, 7), (np.int64, 10**12, 10**9)],  # big: np.unique path
)
def test_two_touching_spheres_become_two_objects(dtype, first, step):
    truth = two_touching_spheres()
    labels = fresh_ids_per_slice(truth, np.random.default_rng(0), first, step).astype(dtype)
    assert len(np.unique(labels)) - 1 == 2 * len(truth)  # 34 per-slice objects
    linked = link_slices(labels)
    assert linked.dtype == dtype and linked.shape == labels.shape
    assert set(np.unique(linked)) == {0, 1, 2}  # consecutive from 1
    assert_same_objects(linked, truth)
    assert labels.dtype == dtype and len(np.unique(labels)) - 1 == 34  # input untouched


def test_ids_follow_first_appearance():
    labels = np.zeros((2, 6, 10), np.int32)
    labels[0, :, 6:] = 9  # right object, seen first in slice 0
    labels[1, :, 6:] = 4  # same object
    labels[1, :, :4] = 3  # new in slice 1
    linked = link_slices(labels)
    assert (linked[:, :, 6:] == 1).all() and (linked[1, :, :4] == 2).all()


def test_vanished_and_new_objects_get_their_own_ids():
    labels = np.zeros((4, 20, 40), np.int32)
    labels[0, 2:10, 2:10] = 1  # A in slices 0, 1
    labels[1, 2:10, 2:10] = 2
    labels[2, 5:15, 25:35] = 3  # A gone; B appears elsewhere
    labels[3, 2:10, 2:10] = 4  # an object at A's place after a gap: not A
    labels[3, 5:15, 25:35] = 5  # B again
    linked = link_slices(labels)
    a, b, again = linked[0, 5, 5], linked[2, 10, 30], linked[3, 5, 5]
    assert linked[1, 5, 5] == a and linked[3, 10, 30] == b
    assert len({a, b, again}) == 3 and {a, b, again} == {1, 2, 3}


def test_a_split_keeps_the_id_in_the_better_part_only():
    labels = np.zeros((2, 20, 20), np.int32)
    labels[0] = 7  # one object over the whole slice
    labels[1, :, :12] = 8  # IoU 0.6
    labels[1, :, 12:] = 9  # IoU 0.4: a candidate at min_iou 0.3, but one to one
    for min_iou in (0.3, 0.5):
        linked = link_slices(labels, min_iou=min_iou)
        assert (linked[1, :, :12] == linked[0, 0, 0]).all()
        assert (linked[1, :, 12:] == 2).all() and linked[0, 0, 0] == 1
    # Above both IoUs nothing links.
    linked = link_slices(labels, min_iou=0.7)
    assert set(np.unique(linked[1])) == {2, 3}


def test_assignment_maximises_the_summed_iou_not_greedy():
    """A1 overlaps B1 best (IoU 6/14), but A1-B2 (0.4) plus A2-B1 (0.4) is the better
    one-to-one assignment; a greedy matcher would link A1-B1 and leave A2, B2 alone."""
    labels = np.zeros((2, 3, 14), np.int32)
    labels[0, :, :10], labels[0, :, 10:] = 1, 2  # A1 [0, 10), A2 [10, 14)
    labels[1, :, :4], labels[1, :, 4:] = 3, 4  # B2 [0, 4), B1 [4, 14)
    linked = link_slices(labels, min_iou=0.3)
    assert (linked[1, :, :4] == linked[0, 0, 0]).all()  # B2 <- A1
    assert (linked[1, :, 4:] == linked[0, 0, 13]).all()  # B1 <- A2
    assert set(np.unique(linked)) == {1, 2}


def test_4d_links_along_z_within_each_time_point():
    truth = two_touching_spheres(depth=9)
    rng = np.random.default_rng(1)
    labels = np.stack([fresh_ids_per_slice(truth, rng, first=1 + 1000 * t) for t in range(3)])
    linked = link_slices(labels, axis=1)  # (T, Z, Y, X)
    assert set(np.unique(linked)) == set(range(7))
    for t in range(3):
        assert_same_objects(linked[t], truth)
        assert set(np.unique(linked[t])) == {0, 2 * t + 1, 2 * t + 2}  # none shared across t
    # Along t (axis 0), every z on its own: the same place at every t is one object per z.
    along_t = link_slices(labels, axis=0)
    assert len(np.unique(along_t)) - 1 == 2 * truth.shape[0]
    for z in range(truth.shape[0]):
        for obj in (1, 2):
            assert len(np.unique(along_t[:, z][:, truth[z] == obj])) == 1


def test_plane_axes_other_than_the_last_two():
    truth = two_touching_spheres()
    labels = fresh_ids_per_slice(truth, np.random.default_rng(2)).astype(np.int32)
    moved = np.moveaxis(labels, 0, 1)  # (Y, Z, X)
    linked = link_slices(moved, axis=1, plane_axes=(0, 2))
    np.testing.assert_array_equal(np.moveaxis(linked, 1, 0), link_slices(labels))
    assert linked.flags.c_contiguous
    np.testing.assert_array_equal(link_slices(moved, axis=1), linked)  # the default there
    # (T, Z, Y, X) stored as (Z, Y, T, X): the default planes would be (T, X), not (Y, X).
    tzyx = np.stack([labels, np.where(labels > 0, labels + 1000, 0)])
    zytx = np.moveaxis(tzyx, 0, 2)
    linked = link_slices(zytx, axis=0, plane_axes=(1, 3))
    np.testing.assert_array_equal(np.moveaxis(linked, 2, 0), link_slices(tzyx, axis=1))
    assert set(np.unique(linked)) == set(range(5))


def test_large_stack_with_hundreds_of_objects_per_slice_is_fast():
    """40 x 512 x 512, 400 squares per slice drifting one pixel per slice, fresh ids."""
    depth, size, cell = 40, 512, 25
    rows = np.arange(size)
    labels = np.zeros((depth, size, size), np.int32)
    for z in range(depth):
        r = (rows + z // 4) // cell  # drift: IoU between slices stays near 1
        c = (rows + z // 3) // cell
        grid = r[:, None] * 21 + c[None, :] + 1
        labels[z] = grid + z * 1000
    assert len(np.unique(labels[0])) >= 400
    start = time.perf_counter()
    linked = link_slices(labels)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"{elapsed:.1f} s"
    # Every square of slice 0 is one object through the stack (same cell index in each).
    cells = labels % 1000
    assert len(np.unique(linked)) == len(np.unique(cells))
    for z in (1, 20, 39):
        same = cells[z] == cells[0]
        np.testing.assert_array_equal(linked[z][same], linked[0][same])


def test_relinking_linked_labels_gives_the_same_objects():
    truth = two_touching_spheres()
    np.testing.assert_array_equal(link_slices(truth.astype(np.uint8)), truth)
    assert link_slices(np.zeros((3, 4, 4), np.uint8)).max() == 0


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "message"),
    [
        (np.zeros((2, 4, 4), np.float32), {}, TypeError, "integer"),
        (np.zeros((2, 4, 4), bool), {}, TypeError, "integer"),
        (np.zeros((4, 4), np.int32), {}, ValueError, "at least 3 axes"),
        (np.zeros((2, 4, 4), np.int32), {"axis": 3}, ValueError, "axis must be"),
        (np.zeros((2, 4, 4), np.int32), {"axis": 1.0}, ValueError, "axis must be"),
        (np.zeros((2, 4, 4), np.int32), {"min_iou": 0}, ValueError, "min_iou"),
        (np.zeros((2, 4, 4), np.int32), {"min_iou": 1.5}, ValueError, "min_iou"),
        (np.zeros((2, 4, 4), np.int32), {"min_iou": float("nan")}, ValueError, "min_iou"),
        (np.zeros((2, 4, 4), np.int32), {"plane_axes": (0, 2)}, ValueError, "plane_axes"),
        (np.zeros((2, 4, 4), np.int32), {"plane_axes": (1, 1)}, ValueError, "plane_axes"),
        (np.full((2, 4, 4), -1, np.int32), {}, ValueError, ">= 0"),
    ],
)
def test_bad_input_is_a_clear_error(labels, kwargs, error, message):
    with pytest.raises(error, match=message):
        link_slices(labels, **kwargs)


def test_more_objects_than_the_dtype_holds():
    labels = np.zeros((300, 2, 2), np.uint8)
    labels[::2] = 1  # 150 objects, each alone (a gap between them)
    assert link_slices(labels).max() == 150
    labels = np.zeros((600, 2, 2), np.uint8)
    labels[::2] = 1
    with pytest.raises(ValueError, match="wider dtype"):
        link_slices(labels)


def test_linking_axes_normalises():
    assert linking_axes(4, -3) == (1, (2, 3))
    assert linking_axes(3, 2) == (2, (0, 1))
    assert linking_axes(3, 1, 1, plane_axes=(-1, 0)) == (1, (2, 0))
