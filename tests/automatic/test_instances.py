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
