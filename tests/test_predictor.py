"""SamPredictor: prompt conventions, the multimask rule, embeddings, bad input."""

import numpy as np
import pytest
import torch

from napari_sam import ImageEmbedding, SamPredictor
from napari_sam.model import SamConfig, build_sam
from tests.reference import TINY


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:150, :210]
    disk = (np.hypot(yy - 70, xx - 90) < 35) * 180
    return (disk + rng.integers(0, 60, (150, 210))).astype(np.uint8)


@pytest.fixture
def predictor(tiny_model, image):
    predictor = SamPredictor(tiny_model)
    predictor.set_image(image)
    return predictor


def test_single_point_gives_three_masks_at_image_size(predictor):
    masks, scores, logits = predictor.predict(points=[[70, 90]])
    assert masks.shape == (3, 150, 210) and masks.dtype == bool
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert logits.shape == (3, 64, 64)
    assert not np.array_equal(masks[0], masks[1])  # three different readings


@pytest.mark.parametrize(
    "prompts",
    [
        {"points": [[70, 90], [20, 20]], "labels": [1, 0]},
        {"box": [40, 50, 110, 130]},
        {"box": [40, 50, 110, 130], "points": [[70, 90]]},
    ],
)
def test_more_than_one_point_gives_the_single_mask(predictor, prompts):
    masks, scores, logits = predictor.predict(**prompts)
    assert masks.shape == (1, 150, 210) and scores.shape == (1,) and logits.shape == (1, 64, 64)


def test_mask_input_refines_and_gives_one_mask(predictor):
    _, scores, logits = predictor.predict(points=[[70, 90]])
    plain = predictor.predict(points=[[70, 90]], multimask=False)
    refined = predictor.predict(points=[[70, 90]], mask_input=logits[np.argmax(scores)])
    assert refined.masks.shape == (1, 150, 210)
    # the mask prompt was used
    assert np.abs(refined.low_res_logits - plain.low_res_logits).max() > 1e-3
    again, _, _ = predictor.predict(points=[[70, 90]], mask_input=logits[None, 0])
    assert again.shape == (1, 150, 210)  # (1, 256, 256)-style input accepted


def test_multimask_can_be_forced(predictor):
    assert predictor.predict(points=[[70, 90]], multimask=False).masks.shape[0] == 1
    assert predictor.predict(box=[40, 50, 110, 130], multimask=True).masks.shape[0] == 3


def test_labels_default_to_foreground(predictor):
    implicit = predictor.predict(points=[[70, 90], [80, 100]])
    explicit = predictor.predict(points=[[70, 90], [80, 100]], labels=[1, 1])
    assert np.array_equal(implicit.masks, explicit.masks)
    negative = predictor.predict(points=[[70, 90], [80, 100]], labels=[1, 0])
    assert not np.array_equal(negative.scores, explicit.scores)


def test_points_are_row_col_converted_once_to_model_xy(tiny_model, predictor):
    """predict((row, col)) equals the model decoding (x, y) scaled to the input frame."""
    # longest side 210 -> 256; input size (183, 256)
    _masks, _scores, logits = predictor.predict(points=[[30, 170]], labels=[1])
    xy = torch.tensor([[[170 * (256 / 210), 30 * (183 / 150)]]])
    with torch.inference_mode():
        expected, _iou = tiny_model.decode(
            predictor.image_embedding.features, (xy, torch.tensor([[1]])), multimask_output=True
        )
    np.testing.assert_allclose(logits, expected[0].numpy(), rtol=1e-5, atol=1e-5)
    assert predictor.image_embedding.input_size == (183, 256)


def test_box_corners_in_any_order_are_normalised(predictor):
    box = predictor.predict(box=[40, 50, 110, 130])
    flipped = predictor.predict(box=[110, 130, 40, 50])
    mixed = predictor.predict(box=[110, 50, 40, 130])
    assert np.array_equal(box.masks, flipped.masks) and np.array_equal(box.masks, mixed.masks)


def test_points_outside_the_image_are_accepted(predictor):
    masks, scores, _ = predictor.predict(points=[[-20, 500], [70, 90]], labels=[0, 1])
    assert masks.shape == (1, 150, 210) and np.isfinite(scores).all()


def test_embedding_can_be_read_and_set_again(tiny_model, image, predictor):
    embedding = predictor.image_embedding
    assert isinstance(embedding, ImageEmbedding)
    assert embedding.original_size == (150, 210) and embedding.features.shape == (1, 64, 16, 16)
    assert embedding.nbytes == 64 * 16 * 16 * 4
    expected = predictor.predict(points=[[70, 90]])

    other = SamPredictor(tiny_model)
    assert not other.is_image_set
    other.image_embedding = embedding
    got = other.predict(points=[[70, 90]])
    assert np.array_equal(got.masks, expected.masks)
    other.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        other.predict(points=[[70, 90]])


def test_the_first_click_finds_the_decoder_prepared(tiny_model, image):
    """set_image also computes what the clicks on the image reuse (in the worker
    thread, for the plugin), so the first click builds nothing; it gives the masks a
    decoder without anything kept gives."""
    predictor = SamPredictor(tiny_model)
    predictor.set_image(image)
    prepared = tiny_model._kept_image_side(predictor.image_embedding.features)
    assert prepared[0] is predictor.image_embedding.features
    kept = dict(prepared[2]._projections)
    assert len(kept) >= 6  # the first layer's three and later layers' projections
    first = predictor.predict(points=[[70, 90]])
    kept_now = tiny_model._kept_image_side(predictor.image_embedding.features)
    assert kept_now is prepared and prepared[2]._projections == kept
    xy, labels = predictor._points_to_model(np.array([[70, 90]]), None, predictor.image_embedding)
    with torch.enable_grad():  # autograd on: nothing kept is used
        fresh, iou = tiny_model.decode(
            predictor.image_embedding.features,
            (torch.tensor(xy, dtype=torch.float32)[None], torch.tensor(labels)[None]),
        )
    np.testing.assert_allclose(first.low_res_logits, fresh[0].detach(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first.scores, iou[0].detach(), rtol=1e-4, atol=1e-5)


def test_embedding_of_another_model_size_is_refused(predictor):
    bigger = build_sam(SamConfig(**{**TINY.to_dict(), "img_size": 320})).eval()
    with pytest.raises(ValueError, match="another input size"):
        SamPredictor(bigger).image_embedding = predictor.image_embedding


def test_any_dtype_and_channel_layout(tiny_model):
    predictor = SamPredictor(tiny_model)
    rng = np.random.default_rng(0)
    for image in (
        rng.integers(0, 4000, (40, 50)).astype(np.uint16),
        rng.random((40, 50, 3)).astype(np.float32) * 1e4,
        rng.integers(0, 256, (40, 50, 4), dtype=np.uint8),
        rng.random((40, 50)) > 0.5,
        np.zeros((1, 1), np.uint8),
    ):
        predictor.set_image(image)
        masks, _, _ = predictor.predict(points=[[0, 0]])
        assert masks.shape == (3, *image.shape[:2])


def test_bfloat16_encoder_through_the_predictor(tiny_model, image, predictor):
    model = build_sam(TINY).eval()
    model.load_state_dict(tiny_model.state_dict())
    model.image_encoder.to(torch.bfloat16)
    half = SamPredictor(model)
    half.set_image(image)
    features = half.image_embedding.features
    assert features.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: the embedding within a few percent of float32's
    reference = predictor.image_embedding.features
    assert ((features - reference).norm() / reference.norm()).item() < 0.05
    assert half.predict(points=[[70, 90]]).masks.shape == (3, 150, 210)


def test_predict_before_set_image(tiny_model):
    with pytest.raises(RuntimeError, match=r"call set_image\(image\)"):
        SamPredictor(tiny_model).predict(points=[[1, 1]])


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros(10, np.uint8), "2D image"),
        (np.zeros((2, 2, 2, 10, 10), np.uint8), "2D image"),
    ],
)
def test_set_image_rejects_bad_images(tiny_model, image, message):
    predictor = SamPredictor(tiny_model)
    with pytest.raises(ValueError, match=message):
        predictor.set_image(image)
    assert not predictor.is_image_set


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({}, "at least one prompt"),
        ({"points": [[1, 2], [3, 4]], "labels": [1]}, "one label per point"),
        ({"points": [[1, 2]], "labels": [2]}, "1 \\(foreground\\) or 0"),
        ({"points": [[1, np.nan]]}, "NaN or infinite"),
        ({"points": [[1, np.inf]]}, "NaN or infinite"),
        ({"points": [[1, 2, 3]]}, "shape \\(N, 2\\)"),
        ({"points": [["a", "b"]]}, "numeric"),
        ({"labels": [1]}, "without points"),
        ({"box": [1, 2, 3]}, "min_row, min_col"),
        ({"box": [1, 2, np.nan, 4]}, "NaN"),
        ({"points": [[1, 2]], "mask_input": np.zeros((256, 256))}, "shape \\(64, 64\\)"),
        ({"points": [[1, 2]], "mask_input": np.zeros((3, 64, 64))}, "low_res_logits\\[i\\]"),
    ],
)
def test_bad_prompts_get_clear_errors(predictor, prompts, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompts)


def test_predict_boxes_gives_one_object_per_box_in_one_batch(predictor):
    boxes = np.array([[5, 5, 30, 40], [20, 50, 55, 85], [40, 10, 10, 30]])
    masks, scores = predictor.predict_boxes(boxes)
    assert masks.shape == (3, 150, 210) and scores.shape == (3,)
    for i, box in enumerate(boxes):
        single, single_scores, _ = predictor.predict(box=box)
        assert (single[0] == masks[i]).mean() > 0.999
        np.testing.assert_allclose(single_scores[0], scores[i], rtol=1e-4, atol=1e-5)
    empty, _ = predictor.predict_boxes(np.zeros((0, 4)))
    assert empty.shape == (0, 150, 210)
    with pytest.raises(ValueError, match="shape \\(B, 4\\)"):
        predictor.predict_boxes([1, 2, 3])


def test_set_image_reports_each_encoder_block_and_can_be_stopped(tiny_model, image):
    from napari_sam.predictor import embed_image

    reference = SamPredictor(tiny_model)
    reference.set_image(image)
    calls = []
    embedding = embed_image(tiny_model, image, on_block=lambda d, t: calls.append((d, t)))
    depth = len(tiny_model.image_encoder.blocks)
    assert calls == [(i, depth) for i in range(1, depth + 1)]
    torch.testing.assert_close(embedding.features, reference.image_embedding.features)

    class Stop(Exception):
        pass

    def stop_after_two(done, _total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        reference.set_image(image, on_block=stop_after_two)
    assert not reference.is_image_set
