"""Automatic instance segmentation (AIS): micro-sam's decoder and post-processing
reproduced (against micro-sam's own outputs, tests/automatic/data), the head loaded from
micro-sam's checkpoint layout, and the label images it gives."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.automatic.instances import InstanceMaps, predict_instance_maps
from napari_sam.model.instance_decoder import InstanceDecoder, instance_decoder_from_state

REFERENCE = np.load(Path(__file__).parent / "data" / "microsam_ais_reference.npz")


def _state(tag: str) -> dict:
    prefix = f"{tag}/state/"
    return {
        key[len(prefix) :]: torch.from_numpy(np.array(REFERENCE[key]))
        for key in REFERENCE.files
        if key.startswith(prefix)
    }


@pytest.mark.parametrize("tag", ["bilinear", "transposed"])
def test_decoder_gives_micro_sams_output(tag):
    decoder = instance_decoder_from_state(_state(tag))
    assert decoder.transposed == (tag == "transposed")
    assert (decoder.embed_dim, decoder.initial_features) == (32, 8)

    class Model:  # what predict_instance_maps reads from a Sam
        img_size = 128
        instance_decoder = decoder

    from napari_sam.predictor import ImageEmbedding

    features = torch.from_numpy(REFERENCE[f"{tag}/embedding"])
    embedding = ImageEmbedding(features, (100, 75), (128, 96))
    maps = predict_instance_maps(Model(), embedding=embedding)
    ours = np.stack([maps.foreground, maps.center_distances, maps.boundary_distances])
    theirs = REFERENCE[f"{tag}/output"]
    assert ours.shape == theirs.shape == (3, 100, 75)
    assert np.abs(ours - theirs).max() < 1e-5
    assert theirs.std() > 0.01  # the maps vary: the comparison means something


@pytest.mark.parametrize("tag", ["bilinear", "transposed"])
def test_full_size_layout_is_micro_sams(tag):
    theirs = json.loads(str(REFERENCE[f"{tag}/full_shapes"]))
    ours = InstanceDecoder(256, 64, transposed=tag == "transposed").state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == theirs


def _matched(ours: np.ndarray, theirs: np.ndarray, iou: float = 0.95) -> float:
    """Fraction of objects of either image with a partner of IoU >= iou in the other."""
    hits = 0
    for a, b in ((ours, theirs), (theirs, ours)):
        for i in range(1, a.max() + 1):
            inside = a == i
            ids, counts = np.unique(b[inside], return_counts=True)
            best = ids[np.argmax(counts)]
            if best and counts.max() / np.count_nonzero(inside | (b == best)) >= iou:
                hits += 1
    return hits / (ours.max() + theirs.max())


@pytest.mark.parametrize("index", [0, 1, 2])
def test_post_processing_gives_micro_sams_labels(index):
    setting = json.loads(str(REFERENCE["settings"]))[index]
    foreground, center, boundary = REFERENCE["maps"]
    maps = InstanceMaps(foreground, center, boundary)
    params = {"min_size": 0, **setting}  # micro-sam's default min_size is 0, ours 10
    ours = maps.labels(**params)
    theirs = REFERENCE[f"labels/{index}"]
    assert ours.max() == theirs.max() >= 5
    assert _matched(ours, theirs) == 1.0
    assert np.mean((ours > 0) == (theirs > 0)) > 0.999


def touching_discs(rows: int = 4, cols: int = 5, radius: int = 14, seed: int = 0) -> np.ndarray:
    """(H, W) int32 labels of discs packed so tightly that each touches its neighbours
    along a straight seam (each pixel goes to the nearest centre)."""
    rng = np.random.default_rng(seed)
    step = 2 * radius - 4
    shape = (rows * step + 2 * radius, cols * step + 2 * radius)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels, nearest = np.zeros(shape, np.int32), np.full(shape, np.inf)
    for index, (i, j) in enumerate(np.ndindex(rows, cols), start=1):
        centre = radius + np.array([i, j]) * step + rng.integers(-2, 3, 2)
        distance = np.hypot(yy - centre[0], xx - centre[1])
        take = (distance <= radius) & (distance < nearest)
        labels[take], nearest[take] = index, distance[take]
    return labels


def test_maps_of_touching_objects_give_each_object_back():
    from napari_sam.training.evaluate import instance_scores
    from napari_sam.training.instance_head import instance_targets

    truth = touching_discs()
    seams = (truth[:, 1:] != truth[:, :-1]) & (truth[:, 1:] > 0) & (truth[:, :-1] > 0)
    assert seams.sum() > 100  # they do touch
    # The maps a head is trained to predict, slightly noisy: the watershed separates them.
    rng = np.random.default_rng(1)
    maps = instance_targets(truth) + rng.normal(0, 0.05, (3, *truth.shape)).astype(np.float32)
    labels = InstanceMaps(*np.clip(maps, 0, 1)).labels()
    assert labels.max() == truth.max() == 20
    assert instance_scores(labels, truth)["f1"] == 1.0
    assert instance_scores(labels, truth)["msa"] > 0.8
    # Foreground alone would merge them: one connected component.
    from skimage.measure import label

    assert label(truth > 0).max() == 1


def test_empty_maps_give_empty_labels():
    shape = (64, 80)
    background = InstanceMaps(np.zeros(shape, np.float32), np.ones(shape, np.float32),
                              np.ones(shape, np.float32))  # fmt: skip
    labels = background.labels()
    assert labels.shape == shape and labels.dtype == np.int32 and not labels.any()


def test_small_objects_go_and_ids_stay_consecutive():
    from napari_sam.training.instance_head import instance_targets

    truth = touching_discs(2, 2, radius=10)
    truth[truth == 2] = 0
    truth[4:12, 20:28] = 9  # a 64-pixel square where disc 2 was
    maps = InstanceMaps(*instance_targets(truth))
    assert maps.labels(min_size=0).max() == 4
    kept = maps.labels(min_size=100)
    assert sorted(np.unique(kept)) == [0, 1, 2, 3]  # the square gone, ids 1..3


def test_objects_smaller_than_the_smoothing_need_less_of_it():
    from napari_sam.training.instance_head import instance_targets

    truth = touching_discs(2, 2, radius=10)
    truth[truth == 2] = 0
    truth[6:11, 22:27] = 9  # 5 x 5 pixels: at sigma 1.6 its distances blur into the rim
    maps = InstanceMaps(*instance_targets(truth))
    assert maps.labels(min_size=0).max() == 3
    assert maps.labels(min_size=0, distance_smoothing=0.8).max() == 4
