import numpy as np

from napari_sam import SamPredictor
from napari_sam.interactive import (
    PromptSet,
    best_index,
    predict_boxes,
    prompts_grew,
    rank_candidates,
)


def test_rank_candidates_orders_by_area():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :2] = True  # 20
    masks[1, :8] = True  # 80
    masks[2, :5] = True  # 50
    cands = rank_candidates(masks, [0.9, 0.5, 0.7], np.zeros((3, 4, 4)))
    assert [c.name for c in cands] == ["whole", "part", "subpart"]
    assert [c.area for c in cands] == [80, 50, 20]
    assert [c.iou for c in cands] == [0.5, 0.7, 0.9]
    assert best_index(cands) == 2
    name, mask, iou = cands[0]
    assert name == "whole" and mask.sum() == 80 and iou == 0.5


def test_single_mask_candidate():
    cands = rank_candidates(np.ones((1, 3, 3), bool), [0.4], np.zeros((1, 4, 4)))
    assert len(cands) == 1 and cands[0].name == "mask"


def test_prompts_grew():
    one = PromptSet.from_arrays([[1, 2]], [1])
    two = PromptSet.from_arrays([[1, 2], [3, 4]], [1, 0])
    moved = PromptSet.from_arrays([[1, 3], [3, 4]], [1, 0])
    assert prompts_grew(one, two)
    assert not prompts_grew(two, one)
    assert not prompts_grew(one, moved)
    assert not prompts_grew(None, one)
    assert not prompts_grew(PromptSet(), one)
    boxed = PromptSet.from_arrays([[1, 2], [3, 4]], [1, 0], box=(0, 0, 5, 5))
    assert not prompts_grew(one, boxed)


def test_predict_boxes_matches_predict(tiny_model):
    rng = np.random.default_rng(0)
    predictor = SamPredictor(tiny_model)
    predictor.set_image(rng.integers(0, 255, (60, 90), dtype=np.uint8))
    boxes = np.array([[5, 5, 30, 40], [20, 50, 55, 85], [40, 10, 10, 30]])
    masks, scores = predict_boxes(predictor, boxes)
    assert masks.shape == (3, 60, 90) and scores.shape == (3,)
    for i, box in enumerate(boxes):
        single, single_scores, _ = predictor.predict(box=box)
        assert (single[0] == masks[i]).mean() > 0.999
        np.testing.assert_allclose(single_scores[0], scores[i], rtol=1e-4, atol=1e-5)
    empty, _ = predict_boxes(predictor, np.zeros((0, 4)))
    assert empty.shape == (0, 60, 90)


def test_encode_steps_matches_set_image_and_cancels(tiny_model):
    import pytest
    import torch

    from napari_sam.interactive import EncodingCancelled, encode_steps

    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny_model)
    predictor.set_image(image)
    steps = encode_steps(tiny_model, image)
    progress = []
    try:
        while True:
            progress.append(next(steps))
    except StopIteration as stop:
        embedding = stop.value
    depth = len(tiny_model.image_encoder.blocks)
    assert progress[-1] == (depth + 1, depth + 1) and len(progress) == depth + 1
    torch.testing.assert_close(embedding.features, predictor.image_embedding.features)
    assert embedding.original_size == (50, 70)

    calls = []
    with pytest.raises(EncodingCancelled):
        for _ in encode_steps(
            tiny_model, image, cancelled=lambda: calls.append(1) or len(calls) > 2
        ):
            pass
    assert len(calls) == 3
