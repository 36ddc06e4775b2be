"""Normalisation of any user image to uint8 RGB, and the resize to the model input."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_sam.image import (
    ROBUST_PERCENTILES,
    resize_longest_side,
    resized_shape,
    to_uint8_rgb,
)


def test_uint8_rgb_is_used_as_is():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8_rgb(image), image)


def test_gray_becomes_three_equal_channels_and_alpha_is_dropped():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_uint8_rgb(gray)
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))
    rgba = np.dstack([np.full((3, 4), v, np.uint8) for v in (10, 20, 30, 40)])
    assert np.array_equal(to_uint8_rgb(rgba)[0, 0], [10, 20, 30])
    assert np.array_equal(to_uint8_rgb(gray[..., None]), out)


def test_bool_maps_to_black_and_white():
    mask = np.array([[True, False], [False, True]])
    out = to_uint8_rgb(mask)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    assert out[0, 0, 0] == 255 and out[0, 1, 0] == 0


def test_uint16_is_scaled_by_robust_percentiles():
    # Values 1..9999 once each, and one hot pixel of 65535 in place of the 0. The 0.5th
    # and 99.5th percentiles (numpy's linear interpolation over 10000 values) are
    # 50.995 and 9950.005, so v maps to 255 * (v - 50.995) / 9899.01, rounded.
    image = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    image[0, 0] = 65535  # one hot pixel must not darken everything else
    out = to_uint8_rgb(image)[..., 0]
    assert out[0, 0] == 255
    assert out[0, 10] == 0  # v = 10, below the low percentile
    assert out[25, 0] == 63  # v = 2500: 63.09
    assert out[50, 0] == 127  # v = 5000: 127.49
    assert out[75, 0] == 192  # v = 7500: 191.89
    assert out[99, 99] == 255  # v = 9999, above the high percentile
    assert ROBUST_PERCENTILES == (0.5, 99.5)  # the documented rule


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.float16, np.float32, np.float64]
)
def test_every_real_dtype_spans_the_uint8_range(dtype):
    start = 0 if np.issubdtype(dtype, np.unsignedinteger) else -5
    ramp = np.linspace(start, 100, 400).reshape(20, 20).astype(dtype)
    out = to_uint8_rgb(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)  # order is kept


def test_float_of_any_range():
    tiny = np.linspace(0, 1e-6, 100).reshape(10, 10)
    huge = np.linspace(-1e30, 1e30, 100).reshape(10, 10)
    for image in (tiny, huge):
        out = to_uint8_rgb(image)[..., 0]
        assert out[0, 0] == 0 and out[-1, -1] == 255


def test_sparse_objects_on_flat_background_fall_back_to_min_max():
    image = np.zeros((100, 100), np.uint16)
    image[50, 50] = 500  # 0.01% of pixels: both percentiles are 0
    out = to_uint8_rgb(image)[..., 0]
    assert out[50, 50] == 255 and out.sum() == 255


def test_constant_image_becomes_black():
    assert to_uint8_rgb(np.full((4, 4), 7.5)).max() == 0


def test_nan_and_inf_become_zero_with_a_warning():
    image = np.linspace(10, 20, 100).reshape(10, 10)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    with pytest.warns(RuntimeWarning, match="3 NaN or infinite"):
        out = to_uint8_rgb(image)[..., 0]
    assert list(out[0, :3]) == [0, 0, 0] and out[-1, -1] == 255
    with pytest.warns(RuntimeWarning):
        assert to_uint8_rgb(np.full((3, 3), np.nan)).max() == 0


def test_finite_float_images_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_uint8_rgb(np.random.default_rng(0).random((8, 8)))


def test_rgb_is_scaled_jointly():
    image = np.zeros((2, 2, 3), np.float32)
    image[..., 0] = 1.0  # pure red stays red, not gray
    image[0, 0] = 0.0
    out = to_uint8_rgb(image)
    assert list(out[1, 1]) == [255, 0, 0]


@pytest.mark.parametrize(
    ("shape", "reading", "fix"),
    [
        # (C, H, W), C in 2..8: channels first, or a short stack
        ((5, 48, 40), "5 channels first (C, H, W)", "np.moveaxis(image, 0, -1)[..., [0, 1, 2]]"),
        ((2, 48, 40), "2 channels first (C, H, W)", "image[c]"),
        ((3, 48, 40), "3 channels first (C, H, W)", "np.moveaxis(image, 0, -1)"),
        ((4, 48, 40), "4 channels first (C, H, W)", "np.moveaxis(image, 0, -1)"),
        ((8, 48, 40), "or a stack of 8 planes (Z, H, W)", "image[0]"),
        # (Z, H, W): a long stack
        ((60, 48, 40), "a stack of 60 2D images (Z, H, W)", "image[30]"),
        ((9, 48, 40), "a stack of 9 2D images (Z, H, W)", "image[4]"),
        ((60, 48, 40), "If it is one image with 40 channels", "image[..., [0, 1, 2]]"),
        # (H, W, C), C not in 1, 3, 4: pick channels
        ((48, 40, 5), "5 channels (H, W, C)", "image[..., [0, 1, 2]]"),
        ((48, 40, 2), "2 channels (H, W, C)", "image[..., 0]"),
        ((48, 40, 12), "12 channels (H, W, C)", "image[..., [0, 1, 2]]"),
        # 4D / 5D: pick one 2D plane
        ((6, 5, 48, 40), "(T, Z, H, W) or (Z, C, H, W)", "image[0, 0]"),
        ((6, 48, 40, 3), "(Z, H, W, C)", "image[0]"),
        ((2, 6, 3, 48, 40), "(T, Z, C, H, W)", "image[0, 0, 0]"),
        ((2, 6, 48, 40, 3), "(T, Z, H, W, C)", "image[0, 0]"),
        ((7,), "2D image", None),
        ((1, 2, 3, 4, 5, 6), "2D image", None),
    ],
)
def test_arrays_that_are_not_one_2d_image_get_their_reading_and_a_fix_that_works(
    shape, reading, fix
):
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    with pytest.raises(ValueError) as raised:
        to_uint8_rgb(image)
    message = str(raised.value)
    assert str(shape) in message and reading in message
    if fix is None:
        return
    assert fix in message
    if shape[0] <= 8 and len(shape) == 3 and shape[0] < shape[-1]:
        # The wrong advice of the reported (5, H, W) case: it picks columns, not channels.
        assert "image[..., [0, 1, 2]]" not in message
    fixed = eval(fix, {"np": np, "image": image, "c": 0})  # the advice, followed
    # Every array above holds planes of 48 x 40 pixels; picking channels last keeps the
    # leading two axes (60 x 48 for the stack read as channels).
    plane = shape[:2] if fix.startswith("image[...") else (48, 40)
    assert to_uint8_rgb(fixed).shape == (*plane, 3)


def test_set_image_of_a_stack_says_stack_or_channels_first(tiny_model):
    from napari_sam import SamPredictor

    predictor = SamPredictor(tiny_model)
    with pytest.raises(ValueError, match=r"\(5, 64, 64\) looks like 5 channels first") as raised:
        predictor.set_image(np.zeros((5, 64, 64), np.uint16))
    assert "np.moveaxis(image, 0, -1)" in str(raised.value) and "image[0]" in str(raised.value)
    assert not predictor.is_image_set


@pytest.mark.parametrize("shape", [(0, 5), (5, 0, 3), (0, 64, 64)])
def test_empty_images_are_refused(shape):
    with pytest.raises(ValueError, match="empty"):
        to_uint8_rgb(np.zeros(shape, np.uint8))


def test_unsupported_dtype():
    with pytest.raises(TypeError, match="complex"):
        to_uint8_rgb(np.zeros((3, 3), np.complex64))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64, bool]),
        shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    )
)
def test_any_2d_array_becomes_uint8_rgb(image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN examples warn by design
        out = to_uint8_rgb(image)
    assert out.shape == (*image.shape, 3) and out.dtype == np.uint8


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((480, 640), (768, 1024)),
        ((1024, 1024), (1024, 1024)),
        ((1, 3000), (1, 1024)),
        ((33, 7), (1024, 217)),
    ],
)
def test_resized_shape_keeps_aspect(shape, expected):
    assert resized_shape(*shape, 1024) == expected


def test_resize_longest_side():
    image = np.zeros((30, 60, 3), np.uint8)
    image[:, 30:] = 200
    out = resize_longest_side(image, 120)
    assert out.shape == (60, 120, 3) and out.flags.writeable
    assert out[:, :55].max() == 0 and out[:, 65:].min() == 200
    assert resize_longest_side(out, 120) is out  # already the right size
