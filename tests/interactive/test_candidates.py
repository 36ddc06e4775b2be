import numpy as np

from napari_sam.interactive import (
    PromptSet,
    best_index,
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
