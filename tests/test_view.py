import numpy as np
import pytest

from napari_sam.view import ViewSpec, extract_view, mask_indices, slice_key


def test_2d_gray_is_itself():
    image = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(extract_view(image, (0, 1)), image)


def test_transposed_display():
    image = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(extract_view(image, (1, 0)), image.T)


def test_3d_stack_slice():
    stack = np.random.default_rng(0).random((5, 6, 7))
    np.testing.assert_array_equal(extract_view(stack, (1, 2), {0: 3}), stack[3])
    # A side view: rows = z, cols = x at y = 2.
    np.testing.assert_array_equal(extract_view(stack, (0, 2), {1: 2}), stack[:, 2, :])


def test_rgb_keeps_colour_axis():
    movie = np.random.default_rng(0).integers(0, 255, (4, 8, 9, 3), dtype=np.uint8)
    view = extract_view(movie, (1, 2), {0: 1}, rgb=True)
    assert view.shape == (8, 9, 3)
    np.testing.assert_array_equal(view, movie[1])
    np.testing.assert_array_equal(
        extract_view(movie, (2, 1), {0: 1}, rgb=True), movie[1].transpose(1, 0, 2)
    )


def test_channel_axis_picks_channels():
    data = np.random.default_rng(0).random((2, 5, 8, 9))  # (z, c, y, x)
    view = extract_view(data, (2, 3), {0: 1}, channel_axis=1, channels=[4, 0, 2])
    np.testing.assert_array_equal(view, np.stack([data[1, 4], data[1, 0], data[1, 2]], -1))
    gray = extract_view(data, (2, 3), {0: 1, 1: 3}, channel_axis=1, channels=[2])
    np.testing.assert_array_equal(gray, data[1, 2])
    with pytest.raises(ValueError, match="1 channel"):
        extract_view(data, (2, 3), {0: 1}, channel_axis=1, channels=[0, 1])


def test_errors_name_the_problem():
    stack = np.zeros((3, 4, 5))
    with pytest.raises(ValueError, match="every axis"):
        extract_view(stack, (1, 2))
    with pytest.raises(IndexError, match="outside"):
        extract_view(stack, (1, 2), {0: 3})


def test_mask_indices_inverts_extract_view():
    labels = np.zeros((3, 6, 7), np.int32)
    mask = np.zeros((6, 7), bool)
    mask[1:3, 2:5] = True
    labels[mask_indices(mask, (1, 2), {0: 2}, 3)] = 5
    assert (labels[2] == 5 * mask).all()
    assert not labels[:2].any()
    # transposed display: mask rows are x
    side = np.zeros((3, 6), bool)  # (z, y) view at x = 4
    side[0, 1] = True
    labels2 = np.zeros((3, 6, 7), np.int32)
    labels2[mask_indices(side, (0, 1), {2: 4}, 3)] = 1
    assert labels2[0, 1, 4] == 1 and labels2.sum() == 1


def test_view_spec_is_hashable_key():
    assert ViewSpec((0, 1), {2: 3}) == ViewSpec([0, 1], {2: 3})
    assert slice_key((1, 2), {0: 3}) != slice_key((1, 2), {0: 4})
    with pytest.raises(ValueError):
        ViewSpec((1, 1), {})
