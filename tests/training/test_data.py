"""Fine-tuning data gathering without napari: (image, labels, which slices) -> 2D examples."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_sam.training.data import LabelledStack, gather_examples


def stack_with_labels():
    """A (3, 20, 30) image; labels in slices 0 and 2, slice 1 unannotated."""
    image = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    labels = np.zeros(image.shape, np.int32)
    labels[0, 2:8, 2:8] = 1
    labels[2, 5:15, 5:25] = 4
    return image, labels


def test_every_labelled_slice_or_the_one_chosen_becomes_a_2d_example():
    image, labels = stack_with_labels()
    every = gather_examples([LabelledStack(image, labels)])
    assert len(every) == 2  # slice 1 holds no label
    assert np.array_equal(every[0].image, image[0]) and np.array_equal(every[1].image, image[2])
    assert np.array_equal(every[1].levels[0], labels[2])
    (one,) = gather_examples([LabelledStack(image, labels, slice_index={0: 2})])
    assert np.array_equal(one.image, image[2]) and np.array_equal(one.levels[0], labels[2])
    # Rows along axis 0, columns along axis 2: the slice at index 6 of axis 1.
    (side,) = LabelledStack(image, labels, displayed=(0, 2), slice_index={1: 6}).examples()
    assert np.array_equal(side.image, image[:, 6, :])
    assert np.array_equal(side.levels[0], labels[:, 6, :])
    # Several pairs, in order; an RGB image keeps its colour axis.
    rgb = np.zeros((20, 30, 3), np.uint8)
    both = gather_examples([LabelledStack(rgb, labels[2], rgb=True), LabelledStack(image, labels)])
    assert [item.image.shape for item in both] == [(20, 30, 3), (20, 30), (20, 30)]


def test_examples_are_copies_so_later_painting_changes_nothing():
    image, labels = stack_with_labels()
    (item,) = gather_examples([LabelledStack(image, labels, slice_index={0: 2})])
    image[2] = 0
    labels[2] = 9
    assert item.image.max() > 0 and set(np.unique(item.levels[0])) == {0, 4}


@pytest.mark.parametrize(
    ("wrong", "says"),
    [
        (lambda labels: np.stack([labels * 40] * 3, -1).astype(np.uint8), "look colour-coded"),
        (lambda labels: np.where(labels > 0, labels, -1), "negative ids"),
        (lambda labels: labels.astype(np.float32), "float32 values"),
        (lambda labels: labels[:, :10], "differs from the image's spatial shape"),
    ],
)
def test_refused_labels_are_named_and_said_before_any_slice_is_read(wrong, says):
    image, labels = stack_with_labels()
    stack = LabelledStack(image, wrong(labels), name="'cells' + 'masks' (all slices)")
    for call in (stack.check, stack.examples, lambda: gather_examples([stack])):
        with pytest.raises(ValueError, match=says) as raised:
            call()
        assert str(raised.value).startswith("'cells' + 'masks' (all slices): ")


def test_a_slice_outside_the_data_or_a_missing_axis_is_said():
    image, labels = stack_with_labels()
    with pytest.raises(ValueError, match=r"^pair: Slice 5 lies outside axis 0 of length 3"):
        LabelledStack(image, labels, slice_index={0: 5}, name="pair").examples()
    with pytest.raises(ValueError, match=r"lacks axes \[0\]"):
        LabelledStack(image, labels, slice_index={}, name="pair").examples()


def test_labels_without_any_object_are_refused_with_what_to_do():
    image, labels = stack_with_labels()
    empty = LabelledStack(image, np.zeros_like(labels), name="'a' + 'b' (2D)")
    with pytest.raises(ValueError, match=r"labels \('a' \+ 'b' \(2D\)\) are empty: paint"):
        gather_examples([empty])
    # The one chosen slice is unannotated, though others are not.
    with pytest.raises(ValueError, match="are empty"):
        gather_examples([LabelledStack(image, labels, slice_index={0: 1})])
    with pytest.raises(ValueError, match="are empty"):
        gather_examples([])


def test_gathering_imports_neither_napari_nor_qt():
    code = (
        "import sys, numpy as np\n"
        "from napari_sam.training.data import LabelledStack, gather_examples\n"
        "labels = np.zeros((2, 8, 8), np.int32); labels[1, 2:5, 2:5] = 3\n"
        "assert len(gather_examples([LabelledStack(np.ones((2, 8, 8)), labels)])) == 1\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'PyQt6', 'PyQt5'}\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
