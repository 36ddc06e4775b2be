"""Segment everything over every slice, without Qt: every slice gets its own objects,
ids are unique across slices, cancelling stops early, cached embeddings are reused.

The model is the tiny SAM with its encoder and decoder replaced by a stand-in whose answer
depends on the image: the "embedding" is the image's brightness on the 64 x 64 low-res
grid, and a point's masks are the bright connected region under it. So an object found
at the wrong place, in the wrong slice or from another slice's embedding shows."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.draw import disk

from napari_sam import AutomaticMaskGenerator, masks_to_labels
from napari_sam.automatic import (
    GenerationCancelled,
    NoObjectsWarning,
    segment_everything_slices,
    segment_slices,
    slice_views,
)
from napari_sam.embeddings import EmbeddingCache
from napari_sam.model import build_sam
from napari_sam.view import ViewSpec, extract_view
from tests.reference import TINY

PARAMS = dict(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.5)
SHAPE = (96, 128)  # (rows, cols) of a slice
RADIUS = 12
# Disc centres (row, col) per slice; slice 2 has none.
CENTRES = [[(30, 30), (60, 90)], [(50, 60)], [], [(25, 100), (70, 30), (70, 80)]]


def bright_region_model() -> torch.nn.Module:
    """TINY SAM whose `encode_image` counts its calls (`model.encoded`) and returns the
    mean brightness pooled to the low-res grid (packed into (1, 16, 16, 16) features),
    and whose decoder gives, for each point, 3 masks of the bright region under it
    (logits +-8; predicted IoU 0.95, or 0 on the background)."""
    model = build_sam(TINY).eval()
    model.encoded = 0

    def encode_image(self, image, on_block=None):
        self.encoded += 1
        padded = self.preprocess(image).mean(1, keepdim=True)
        low = F.avg_pool2d(padded, 4)  # (1, 1, 64, 64)
        return F.pixel_unshuffle(low, 4)  # (1, 16, 16, 16)

    def decode_iou_first(self, features, points, boxes, mask_input, multimask, min_iou):
        bright = F.pixel_shuffle(features, 4)[0, 0].numpy() > 0
        regions, _ = ndimage.label(bright)
        xy = points[0][:, 0].numpy()  # (B, 2) (x, y) in the model's input frame
        rows = np.clip((xy[:, 1] / 4).astype(int), 0, 63)
        cols = np.clip((xy[:, 0] / 4).astype(int), 0, 63)
        ids = regions[rows, cols]
        masks = torch.as_tensor(regions[None] == ids[:, None, None])
        low = torch.where(masks, 8.0, -8.0)[:, None].expand(-1, 3, -1, -1)
        iou = torch.as_tensor(np.where(ids > 0, 0.95, 0.0), dtype=torch.float32)
        iou = iou[:, None].expand(-1, 3)
        keep = torch.nonzero((iou > min_iou).any(1))[:, 0]
        return iou, keep, low[keep].contiguous()

    model.encode_image = types.MethodType(encode_image, model)
    model.decode_iou_first = types.MethodType(decode_iou_first, model)
    model.prepare_decoder = lambda features: None
    return model


def disc_stack(centres=CENTRES) -> np.ndarray:
    stack = np.full((len(centres), *SHAPE), 20, np.uint8)
    for plane, points in zip(stack, centres, strict=True):
        for centre in points:
            plane[disk(centre, RADIUS, shape=SHAPE)] = 200
    return stack


def disc_mask(centre) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[disk(centre, RADIUS, shape=SHAPE)] = True
    return mask


def assert_discs_found(plane: np.ndarray, centres) -> list[int]:
    """Each disc is one object that covers it (IoU >= 0.85), nothing else is labelled;
    returns the discs' ids."""
    ids = []
    for centre in centres:
        disc = disc_mask(centre)
        found = int(plane[centre])
        assert found > 0, f"no object at {centre}"
        obj = plane == found
        assert (obj & disc).sum() / (obj | disc).sum() >= 0.85
        ids.append(found)
    assert len(set(ids)) == len(ids)  # one id per disc
    assert set(np.unique(plane)) == {0, *ids}
    return ids


def read_stack(stack):
    def read(view: ViewSpec):
        return extract_view(stack, view.displayed, view.slice_index), view.key()

    return read


@pytest.fixture(scope="module")
def model():
    return bright_region_model()


def test_every_slice_gets_its_objects_with_ids_unique_across_slices(model):
    stack = disc_stack()
    labels = segment_everything_slices(model, stack, **PARAMS)
    assert labels.shape == stack.shape and labels.dtype == np.int32
    ids = [assert_discs_found(p, c) for p, c in zip(labels, CENTRES, strict=True)]
    everyone = [i for per_slice in ids for i in per_slice]
    assert len(set(everyone)) == len(everyone) == 6
    # Ids of a later slice lie above those of the earlier ones.
    assert max(ids[0]) < min(ids[1]) and max(ids[1]) < min(ids[3])


def test_each_slice_is_the_2d_result_offset_by_the_ids_before(model):
    stack = disc_stack()
    generator = AutomaticMaskGenerator(model, **PARAMS)
    steps = list(segment_slices(generator, read_stack(stack), slice_views(stack.shape)))
    assert [s.index for s in steps] == [0, 1, 2, 3]
    assert [s.view.slice_index for s in steps] == [{0: z} for z in range(4)]
    offset = 0
    for step, plane in zip(steps, stack, strict=True):
        alone = masks_to_labels(generator.generate(plane), SHAPE)
        expected = np.where(alone > 0, alone + offset, 0)
        np.testing.assert_array_equal(step.labels, expected)
        offset += int(alone.max())
        assert step.last_id == offset
    assert steps[2].last_id == steps[1].last_id  # the empty slice takes no id


def test_first_id_and_the_int32_limit(model):
    stack = disc_stack(CENTRES[:2])
    generator = AutomaticMaskGenerator(model, **PARAMS)
    read, views = read_stack(stack), slice_views(stack.shape)
    steps = list(segment_slices(generator, read, views, first_id=100))
    assert min(np.unique(steps[0].labels)[1:]) >= 100
    assert steps[-1].last_id == 102  # 3 discs: 100, 101, 102
    limit = np.iinfo(np.int32).max
    with pytest.raises(ValueError, match="int32"):
        list(segment_slices(generator, read, views, first_id=limit - 1))
    with pytest.raises(ValueError, match="first_id"):  # at the call, before any slice
        segment_slices(generator, read, views, first_id=0)


def test_cancel_stops_before_the_next_slice_and_during_one(model):
    stack = disc_stack()
    generator = AutomaticMaskGenerator(model, **PARAMS)
    steps, stop = [], []
    model.encoded = 0
    slices = segment_slices(
        generator, read_stack(stack), slice_views(stack.shape), cancelled=lambda: bool(stop)
    )
    with pytest.raises(GenerationCancelled):
        for step in slices:
            steps.append(step)
            stop.append(True)  # the user cancels after the first slice
    assert [s.index for s in steps] == [0] and model.encoded == 1

    # Cancelled while a slice is being segmented (after its embedding): nothing yielded.
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    slices = segment_slices(generator, read_stack(stack), slice_views(stack.shape),
                            cancelled=cancelled)  # fmt: skip
    with pytest.raises(GenerationCancelled):
        next(slices)
    assert len(calls) == 3


def test_cached_embeddings_are_reused_and_kept(model):
    stack = disc_stack()
    generator = AutomaticMaskGenerator(model, **PARAMS)
    read, views = read_stack(stack), slice_views(stack.shape)
    cache = EmbeddingCache()
    model.encoded = 0
    first = list(segment_slices(generator, read, views, cache=cache, model_id=7))
    # A blank slice (one value everywhere) has nothing to find: it is not even embedded.
    shown = sum(len(np.unique(plane)) > 1 for plane in stack)
    assert shown == 3 and not first[2].labels.any()
    assert model.encoded == shown and len(cache) == shown
    assert {key[1:] for key in cache.keys()}  # noqa: SIM118 (not a dict) == {(v.key(), 7) for v in views}
    second = list(segment_slices(generator, read, views, cache=cache, model_id=7))
    assert model.encoded == shown  # every embedding came from the cache
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
    # Another model's id: its own embeddings.
    list(segment_slices(generator, read, views[:1], cache=cache, model_id=8))
    assert model.encoded == shown + 1
    # Without a cache every slice is embedded.
    list(segment_slices(generator, read, views))
    assert model.encoded == 2 * shown + 1
    with pytest.raises(ValueError, match="model_id"):  # at the call, before any slice
        segment_slices(generator, read, views, cache=cache)


def test_cached_embedding_of_the_same_key_is_used_as_is(model):
    """The embedding under a view's key is the one used: a wrong one gives its objects."""
    stack = disc_stack()
    generator = AutomaticMaskGenerator(model, **PARAMS)
    read, views = read_stack(stack), slice_views(stack.shape)
    cache = EmbeddingCache()
    list(segment_slices(generator, read, views[:2], cache=cache, model_id=1))
    keys = cache.keys()
    cache.put(keys[1], cache.get(keys[0]))  # slice 1's key now holds slice 0's embedding
    model.encoded = 0
    steps = list(segment_slices(generator, read, views[:2], cache=cache, model_id=1))
    assert model.encoded == 0
    assert_discs_found(steps[1].labels, CENTRES[0])  # slice 0's discs, in slice 1


class CountingArray:
    """An array-like that records what is read from it (as dask or zarr would load)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []
        self.shape, self.ndim, self.dtype = array.shape, array.ndim, array.dtype

    def __getitem__(self, key):
        part = self.array[key]
        self.reads.append(part.shape)
        return part


def test_lazy_data_is_read_one_slice_at_a_time(model):
    stack = CountingArray(disc_stack())
    labels = segment_everything_slices(model, stack, **PARAMS)
    assert stack.reads == [SHAPE] * 4
    for plane, centres in zip(labels, CENTRES, strict=True):
        assert_discs_found(plane, centres)


def test_displayed_axes_other_than_the_last_two(model):
    stack = disc_stack()
    moved = np.moveaxis(stack, 0, 1)  # (rows, z, cols)
    labels = segment_everything_slices(model, moved, displayed=(0, 2), **PARAMS)
    assert labels.shape == moved.shape
    for z, centres in enumerate(CENTRES):
        assert_discs_found(labels[:, z], centres)
    # Transposed display: slices seen as (cols, rows); the objects land where they are.
    labels = segment_everything_slices(model, stack, displayed=(2, 1), **PARAMS)
    for plane, centres in zip(labels, CENTRES, strict=True):
        assert_discs_found(plane, centres)


def test_2d_gray_and_rgb_images_are_one_slice(model):
    plane = disc_stack()[0]
    labels = segment_everything_slices(model, plane, **PARAMS)
    assert labels.shape == SHAPE
    assert_discs_found(labels, CENTRES[0])
    rgb = np.repeat(plane[..., None], 3, axis=2)
    labels = segment_everything_slices(model, rgb, **PARAMS)
    assert labels.shape == SHAPE
    assert_discs_found(labels, CENTRES[0])


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (np.zeros(5), {}, "at least 2 spatial axes"),
        (np.zeros((2, 8, 8)), {"displayed": (1, 1)}, "two different axes"),
        (np.zeros((2, 8, 8)), {"displayed": (0, 3)}, "two different axes"),
        (np.zeros((2, 8, 8)), {"displayed": (0,)}, "two different axes"),
        (np.zeros((2, 8, 8)), {"points_per_side": 0}, "points_per_side"),
        (np.zeros((2, 8, 8)), {"link_axis": 1}, "link_axis"),  # a displayed axis
        (np.zeros((2, 8, 8)), {"link_axis": 3}, "link_axis"),
        (np.zeros((2, 8, 8)), {"link_axis": True}, "link_axis"),
        (np.zeros((8, 8)), {"link_axis": 0}, "link_axis"),
        (np.zeros((2, 8, 8)), {"link_axis": 0, "min_link_iou": 0}, "min_link_iou"),
        (np.zeros((2, 8, 8)), {"link_axis": 0, "min_link_iou": 2}, "min_link_iou"),
    ],
)
def test_bad_input_is_a_clear_error(model, data, kwargs, message):
    model.encoded = 0
    with pytest.raises(ValueError, match=message):
        segment_everything_slices(model, data, **kwargs)
    assert model.encoded == 0  # before any slice


# A disc drifting through slices 0-3 (one object), one that ends at slice 1 and one that
# appears at slice 2 elsewhere (two more).
DRIFT = [[(30, 30), (60, 95)], [(32, 32), (60, 95)], [(34, 34), (70, 60)],
         [(36, 36), (70, 60)]]  # fmt: skip


def test_link_axis_gives_each_object_one_id_through_the_slices(model):
    stack = disc_stack(DRIFT)
    unlinked = segment_everything_slices(model, stack, **PARAMS)
    assert len(np.unique(unlinked)) - 1 == 8  # a new id in every slice
    labels = segment_everything_slices(model, stack, link_axis=0, **PARAMS)
    assert labels.shape == stack.shape and labels.dtype == np.int32
    ids = [assert_discs_found(p, c) for p, c in zip(labels, DRIFT, strict=True)]
    drifting, ending, appearing = ids[0][0], ids[0][1], ids[2][1]
    assert [i[0] for i in ids] == [drifting] * 4
    assert ids[1][1] == ending and ids[3][1] == appearing
    assert {drifting, ending, appearing} == {1, 2, 3}  # consecutive from 1
    # The same objects as without linking, only their ids changed.
    assert ((labels > 0) == (unlinked > 0)).all()
    assert len({(a, b) for a, b in zip(labels.ravel(), unlinked.ravel(), strict=True)}) == 9


def test_link_axis_of_a_time_lapse_links_z_within_each_time_point(model):
    stack = np.stack([disc_stack(DRIFT), disc_stack(DRIFT)])  # (T, Z, Y, X)
    labels = segment_everything_slices(model, stack, link_axis=1, **PARAMS)
    assert set(np.unique(labels[0])) == {0, 1, 2, 3}
    assert set(np.unique(labels[1])) == {0, 4, 5, 6}
    np.testing.assert_array_equal(labels[1], np.where(labels[0] > 0, labels[0] + 3, 0))
    # Displayed axes (row, col) = (0, 2) of (Y, Z, X) data: linked along z, axis 1.
    moved = np.moveaxis(disc_stack(DRIFT), 0, 1)
    labels = segment_everything_slices(model, moved, displayed=(0, 2), link_axis=-2, **PARAMS)
    assert len(np.unique(labels)) - 1 == 3
    for z, centres in enumerate(DRIFT):
        assert_discs_found(labels[:, z], centres)
    assert {int(labels[DRIFT[z][0][0], z, DRIFT[z][0][1]]) for z in range(4)} == {1}


@pytest.mark.parametrize("shape", [(0, 40, 40), (2, 0, 5), (3, 4, 0)])
def test_empty_data_is_a_clear_error(model, shape):
    with pytest.raises(ValueError, match="The data is empty"):
        segment_everything_slices(model, np.zeros(shape, np.uint8), method="amg")


def test_a_stack_with_no_object_says_why_once(model):
    """Every slice decoded, none passes the filters: one warning for the whole stack,
    with the scores seen over all slices (the stand-in predicts 0.95 or 0) and what to
    lower; a stack of blank slices says that instead. Objects found: no warning."""
    stack = disc_stack()
    strict = dict(PARAMS, pred_iou_thresh=0.99)
    with pytest.warns(NoObjectsWarning) as caught:
        labels = segment_everything_slices(model, stack, method="amg", **strict)
    assert not labels.any()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "any of the 4 slices" in message and "pred_iou_thresh" in message
    assert "0.00-0.95" in message  # the range over every slice's candidates
    with pytest.warns(NoObjectsWarning, match="Every slice is blank"):
        segment_everything_slices(model, np.full((3, *SHAPE), 7, np.uint8), method="amg",
                                  **PARAMS)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoObjectsWarning)
        assert segment_everything_slices(model, stack, method="amg", **PARAMS).any()
