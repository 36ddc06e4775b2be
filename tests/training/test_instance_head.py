"""Training an instance head: its targets, and the scores it is judged by."""

import numpy as np
import pytest
import torch

from napari_sam.training.evaluate import instance_scores
from napari_sam.training.instance_head import instance_targets


def test_targets_are_zero_at_the_centre_and_one_at_the_rim_and_outside():
    labels = np.zeros((40, 60), np.int32)
    rows, cols = np.mgrid[:40, :60]
    labels[(rows - 20) ** 2 + (cols - 15) ** 2 <= 100] = 1  # a disc of radius 10
    labels[5:35, 30:58] = 2  # a rectangle touching nothing
    foreground, centre, boundary = instance_targets(labels)
    assert np.array_equal(foreground, labels > 0)
    assert centre[20, 15] == 0 and boundary[20, 15] == 0  # the disc's innermost pixel
    assert centre[labels == 0].min() == boundary[labels == 0].min() == 1
    ring = (labels == 1) & ((rows - 20) ** 2 + (cols - 15) ** 2 > 81)
    assert boundary[ring].min() > 0.8 and centre[ring].min() > 0.8
    for index in (1, 2):  # normalised per object
        assert centre[labels == index].max() == pytest.approx(1.0)
        assert boundary[labels == index].max() == pytest.approx(1.0, abs=0.12)


def test_touching_objects_get_a_boundary_between_them():
    labels = np.zeros((20, 40), np.int32)
    labels[2:18, 2:20], labels[2:18, 20:38] = 1, 2
    _, _, boundary = instance_targets(labels)
    assert boundary[10, 19] == boundary[10, 20] == 1.0  # the touching columns are rims
    assert boundary[10, 10] < 0.2 and boundary[10, 29] < 0.2


def test_instance_scores():
    truth = np.zeros((20, 20), np.int32)
    truth[:8, :8], truth[10:, 10:] = 1, 2
    assert instance_scores(truth, truth) == {"f1": 1.0, "msa": 1.0}
    half = truth.copy()
    half[half == 2] = 0  # one object missed
    assert instance_scores(half, truth)["f1"] == pytest.approx(2 / 3)
    assert instance_scores(half, truth)["msa"] == pytest.approx(0.5)
    shrunk = truth.copy()
    shrunk[:8, 6:8] = 0  # IoU 0.75: counted up to the 0.75 threshold of 0.5..0.95
    scores = instance_scores(shrunk, truth)
    assert scores["f1"] == 1.0
    # Thresholds 0.5..0.75 (6 of 10) see 2 TP; 0.8..0.95 see 1 TP, 1 FP, 1 FN.
    assert scores["msa"] == pytest.approx((6 * 1.0 + 4 * (1 / 3)) / 10)
    empty = np.zeros_like(truth)
    assert instance_scores(empty, empty) == {"f1": 1.0, "msa": 1.0}
    assert instance_scores(empty, truth) == {"f1": 0.0, "msa": 0.0}


def _one_disc_source(rng):
    """A 200 x 160 image: one bright disc on a dark background, and its label."""
    from napari_sam.training.data import LabelledImage

    rows, cols = np.mgrid[:200, :160]
    labels = (((rows - 90) ** 2 + (cols - 70) ** 2) < 45**2).astype(np.int32)
    return LabelledImage((20 + 200 * labels).astype(np.uint8), [labels])


def test_training_windows_hold_the_pixels_under_their_targets(monkeypatch):
    """For a head that reads the image, each window's pixels, targets and embedding
    tokens cover the same part of the image (16 px per token)."""
    import napari_sam.training.instance_head as instance_head
    from napari_sam.model import build_sam
    from tests.reference import TINY

    monkeypatch.setattr(instance_head, "blob_source", _one_disc_source)
    model = build_sam(TINY).eval()
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        example = instance_head._example(model, rng, image_path=True).detached()
    side = 16 * model.prompt_encoder.image_embedding_size[0]
    assert example.pixels.shape == (1, 3, side, side) and example.targets.shape == (3, side, side)
    for _ in range(10):
        features, pixels, targets, valid = instance_head._batch([example], rng, 1, 6)
        assert features.shape[-2:] == (6, 6)
        assert pixels.shape[-2:] == targets.shape[-2:] == (96, 96)
        bright = (pixels[0, 0] > 0)[valid[0]]  # the disc: far above the mean
        foreground = (targets[0, 0] == 1)[valid[0]]
        assert (bright == foreground).float().mean() > 0.97  # all but the antialiased rim


def test_a_head_with_an_image_path_learns_a_disc(monkeypatch):
    """A few seconds of training on one repeated image lower the loss of the head's
    maps against its targets (the loop, its windows and its loss fit together)."""
    import napari_sam.training.instance_head as instance_head
    from napari_sam.model import build_sam
    from napari_sam.model.instance_decoder import InstanceDecoder
    from tests.reference import TINY

    monkeypatch.setattr(instance_head, "blob_source", _one_disc_source)
    torch.manual_seed(0)
    model = build_sam(TINY).eval()
    head = InstanceDecoder(TINY.prompt_embed_dim, 4, image_channels=3)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        example = instance_head._example(model, rng, image_path=True)

    def loss() -> float:
        with torch.inference_mode():
            maps = head.eval()(example.features, example.pixels)
            return instance_head._loss(maps, example.targets[None], example.valid[None]).item()

    before = loss()
    instance_head.train_head(model, head, 6.0, batch_size=2, crop=8, pool_size=4, lr=1e-2)
    assert not head.training
    assert loss() < 0.7 * before
