import numpy as np
import pytest

from napari_sam.interactive.prompts import (
    affine_matrix,
    boxes_to_view,
    points_to_view,
    polarity_to_labels,
    to_image_data,
)
from napari_sam.view import ViewSpec

EYE2, EYE3 = np.eye(3), np.eye(4)


def test_identity_2d_points_and_polarity():
    out = points_to_view(
        [[3, 4], [5, 6]], EYE2, EYE2, ViewSpec((0, 1), {}), 2, polarity=["positive", "negative"]
    )
    np.testing.assert_allclose(out.coords, [[3, 4], [5, 6]])
    np.testing.assert_array_equal(out.labels, [1, 0])
    np.testing.assert_array_equal(out.indices, [0, 1])


def test_scaled_and_translated_image():
    # Image pixels are 2 x 0.5 world units, shifted by (10, 20); the points layer is in
    # world units (identity), as a user clicking on the image creates it.
    image = affine_matrix(2, scale=(2, 0.5), translate=(10, 20))
    out = points_to_view([[14, 21]], EYE2, image, ViewSpec((0, 1), {}), 2)
    np.testing.assert_allclose(out.coords, [[2, 2]])
    # a points layer with the same transform as the image: data coords pass through
    out = points_to_view([[7, 9]], image, image, ViewSpec((0, 1), {}), 2)
    np.testing.assert_allclose(out.coords, [[7, 9]])


def test_rotated_image():
    theta = np.pi / 2
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    image = affine_matrix(2, linear=rot)
    world = rot @ np.array([3.0, 5.0])
    out = points_to_view([world], EYE2, image, ViewSpec((0, 1), {}), 2)
    np.testing.assert_allclose(out.coords, [[3, 5]], atol=1e-9)


def test_3d_points_on_other_slices_are_dropped():
    pts = [[2, 5, 6], [3, 7, 8], [2.4, 1, 1], [2.6, 0, 0]]
    out = points_to_view(pts, EYE3, EYE3, ViewSpec((1, 2), {0: 2}), 3)
    np.testing.assert_array_equal(out.indices, [0, 2])
    np.testing.assert_allclose(out.coords, [[5, 6], [1, 1]])


def test_3d_with_z_scale():
    image = affine_matrix(3, scale=(4, 1, 1))  # anisotropic stack, z step 4
    pts = [[8, 5, 6], [9, 1, 1], [11, 2, 2]]  # world z 8, 9, 11 -> slices 2, 2.25, 2.75
    out = points_to_view(pts, EYE3, image, ViewSpec((1, 2), {0: 2}), 3)
    np.testing.assert_array_equal(out.indices, [0, 1])
    np.testing.assert_allclose(out.coords, [[5, 6], [1, 1]])


def test_2d_points_over_3d_image_use_current_slice():
    out = points_to_view([[5, 6]], EYE2, EYE3, ViewSpec((1, 2), {0: 4}), 3, world_point=[4, 0, 0])
    np.testing.assert_allclose(out.coords, [[5, 6]])
    with pytest.raises(ValueError, match="world_point"):
        to_image_data([[5, 6]], EYE2, EYE3, 3)


def test_transposed_view():
    out = points_to_view([[1, 2, 3]], EYE3, EYE3, ViewSpec((2, 0), {1: 2}), 3)
    np.testing.assert_allclose(out.coords, [[3, 1]])


def test_empty_points():
    out = points_to_view(np.zeros((0, 2)), EYE2, EYE2, ViewSpec((0, 1), {}), 2)
    assert out.coords.shape == (0, 2) and out.labels.shape == (0,)


def test_polarity_values():
    np.testing.assert_array_equal(
        polarity_to_labels(["positive", "negative", True, False, "+", "-", None], 7),
        [1, 0, 1, 0, 1, 0, 1],
    )
    np.testing.assert_array_equal(polarity_to_labels(None, 2), [1, 1])
    with pytest.raises(ValueError, match="polarity"):
        polarity_to_labels(["maybe"], 1)


def test_boxes_only_rectangles_on_slice():
    rect = np.array([[2, 10, 20], [2, 10, 40], [2, 30, 40], [2, 30, 20]], float)
    other_slice = rect.copy()
    other_slice[:, 0] = 3
    ellipse = rect.copy()
    out = boxes_to_view(
        [rect, other_slice, ellipse],
        ["rectangle", "rectangle", "ellipse"],
        EYE3,
        EYE3,
        ViewSpec((1, 2), {0: 2}),
        3,
    )
    np.testing.assert_array_equal(out.indices, [0])
    np.testing.assert_allclose(out.boxes, [[10, 20, 30, 40]])


def test_boxes_through_scale():
    image = affine_matrix(2, scale=(2, 2))
    rect = np.array([[0, 0], [0, 8], [4, 8], [4, 0]], float)
    out = boxes_to_view([rect], None, EYE2, image, ViewSpec((0, 1), {}), 2)
    np.testing.assert_allclose(out.boxes, [[0, 0, 2, 4]])
