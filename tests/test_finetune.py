"""Fine-tuning on a user's pairs: held-out split, before/after IoU, the checkpoint it
writes, cancellation, nD slices, and `napari-sam finetune`."""

from __future__ import annotations

import copy
import dataclasses

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from napari_sam.model import build_sam
from napari_sam.training import finetuning
from napari_sam.training.data import LabelledImage
from napari_sam.training.evaluate import single_click_iou
from napari_sam.training.finetuning import (
    default_config,
    finetune,
    finetuned_models,
    labelled_slices,
    save_finetuned,
    split_holdout,
)
from napari_sam.zoo import load_model
from reference import TINY, randomize_
from test_training import blobs


@pytest.fixture(autouse=True)
def fresh_finetuned_list(monkeypatch):
    monkeypatch.setattr(finetuning, "_finetuned", {})


def blob_pairs(count: int, start: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    items = [blobs(np.random.default_rng(start + i)) for i in range(count)]
    return [(item.image, item.levels[0]) for item in items]


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(TINY).eval()


def test_holdout_is_a_deterministic_fifth_of_the_objects():
    items = [LabelledImage(image, [labels]) for image, labels in blob_pairs(6)]
    total = sum(len(np.unique(item.levels[0])) - 1 for item in items)
    training, held_out = split_holdout(items, 0.2, seed=3)
    again_training, again_held_out = split_holdout(items, 0.2, seed=3)
    held = sum(len(np.unique(item.levels[0])) - 1 for item in held_out)
    kept = sum(len(np.unique(item.levels[0])) - 1 for item in training)
    assert held == round(0.2 * total) and kept + held == total
    for a, b in zip(held_out, again_held_out, strict=True):
        assert np.array_equal(a.levels[0], b.levels[0])
    assert len(training) == len(again_training)
    # Held-out objects are gone from the training labels, and nothing else is.
    for item in items:
        ids = set(np.unique(item.levels[0])) - {0}
        train_ids = set().union(
            *(set(np.unique(t.levels[0])) for t in training if t.image is item.image)
        )
        held_ids = set().union(
            *(set(np.unique(h.levels[0])) for h in held_out if h.image is item.image)
        )
        assert (train_ids | held_ids) - {0} == ids and not (train_ids & held_ids) - {0}
    other_seed = split_holdout(items, 0.2, seed=4)[1]
    assert [h.levels[0].tobytes() for h in other_seed] != [h.levels[0].tobytes() for h in held_out]
    # One image with two objects: one is held out, one trained on.
    two = np.where(np.isin(items[0].levels[0], [1, 2]), items[0].levels[0], 0)
    training, held_out = split_holdout([LabelledImage(items[0].image, [two])], 0.2)
    assert len(held_out) == 1 and len(np.unique(held_out[0].levels[0])) == 2
    assert len(np.unique(training[0].levels[0])) == 2


def test_finetune_reports_held_out_iou_and_writes_a_loadable_checkpoint(tmp_path):
    model = tiny()
    original = copy.deepcopy(model)
    pairs = blob_pairs(4)
    config = dataclasses.replace(
        default_config(30, decoder_only=True),
        learning_rate=3e-3,
        scale_range=(1.0, 2.0),
        warmup_steps=2,
    )
    steps_seen = []
    path = tmp_path / "models" / "blobs.pt"
    result = finetune(
        model,
        pairs,
        out_path=path,
        config=config,
        progress=lambda step, total, stats: steps_seen.append((step, total)),
    )
    assert steps_seen == [(s, 30) for s in range(1, 31)]
    assert not result.cancelled and result.steps_done == 30 and result.path == path
    total = result.training_objects + result.held_out_objects
    assert result.held_out_objects == round(0.2 * total) >= 1

    # The IoUs are those of the model before and of the saved model after, measured on
    # exactly the held-out objects.
    items = [LabelledImage(image, [labels]) for image, labels in pairs]
    _, held_out = split_holdout(items, 0.2, seed=0)
    clicks = max(len(np.unique(item.levels[0])) - 1 for item in held_out)
    assert result.before_iou == pytest.approx(single_click_iou(original, held_out, clicks, 0))
    loaded = load_model(path, device="cpu", dtype="float32")  # config read from the file
    assert loaded.config == TINY
    assert result.after_iou == pytest.approx(single_click_iou(loaded, held_out, clicks, 0))
    assert result.after_iou > result.before_iou + 0.03

    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for key, value in original.image_encoder.state_dict().items():  # decoder-only
        assert torch.equal(model.image_encoder.state_dict()[key], value), key
    assert not torch.equal(
        original.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight
    )
    stored = torch.load(path, weights_only=True)[finetuning.METADATA_KEY]
    assert stored["steps"] == 30 and stored["decoder_only"] is True
    assert stored["after_iou"] == pytest.approx(result.after_iou)
    assert finetuned_models() == {"blobs": path.resolve()}


def test_full_finetuning_trains_the_encoder_too(tmp_path):
    model = tiny()
    encoder = copy.deepcopy(model.image_encoder.state_dict())
    result = finetune(model, blob_pairs(2), steps=2, decoder_only=False, holdout=0.0)
    assert result.steps_done == 2 and result.path is None
    assert np.isnan(result.before_iou) and np.isnan(result.after_iou)  # nothing held out
    changed = [
        k for k, v in model.image_encoder.state_dict().items() if not torch.equal(v, encoder[k])
    ]
    assert changed


def test_cancellation_stops_between_steps_and_saves_nothing(tmp_path):
    model = tiny()
    progressed = []
    polls = []

    def should_stop():
        polls.append(len(progressed))
        return len(progressed) >= 2

    path = tmp_path / "never.pt"
    result = finetune(
        model,
        blob_pairs(2),
        steps=50,
        out_path=path,
        progress=lambda step, total, stats: progressed.append(step),
        should_stop=should_stop,
    )
    assert progressed == [1, 2] and polls == [0, 1, 2]  # polled before every step
    assert result.cancelled and result.steps_done == 2 and result.steps == 50
    assert result.path is None and not path.exists() and finetuned_models() == {}
    assert np.isnan(result.after_iou) and np.isfinite(result.before_iou)


def test_finetune_rejects_empty_labels():
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="no objects"):
        finetune(tiny(), [(image, np.zeros((64, 64), np.int32))], steps=1)
    with pytest.raises(ValueError, match="2D"):
        finetune(tiny(), [(image[None], np.zeros((1, 64, 64), np.int32))], steps=1)


def test_labelled_slices_cut_nd_data_into_2d_examples():
    stack = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    labels = np.zeros(stack.shape, np.int32)
    labels[0, 2:8, 2:8] = 1
    labels[2, 5:15, 5:25] = 4
    every = labelled_slices(stack, labels)
    assert len(every) == 2  # the unlabelled slice 1 is skipped
    assert np.array_equal(every[1].image, stack[2]) and np.array_equal(
        every[1].levels[0], labels[2]
    )
    one = labelled_slices(stack, labels, slice_index={0: 2})
    assert len(one) == 1 and np.array_equal(one[0].image, stack[2])
    # Displayed axes (0, 2): slices along axis 1.
    side = labelled_slices(stack, labels, displayed=(0, 2), slice_index={1: 6})
    assert np.array_equal(side[0].image, stack[:, 6, :])
    rgb = np.zeros((20, 30, 3), np.uint8)
    assert labelled_slices(rgb, labels[0], rgb=True)[0].image.shape == (20, 30, 3)
    with pytest.raises(ValueError, match="differs"):
        labelled_slices(stack, labels[0])


def test_cli_finetune_end_to_end(tmp_path, capsys):
    base = tmp_path / "base.pt"
    start = randomize_(tiny(), seed=1)
    save_finetuned(start, base)  # a non-official config, stored in the file
    (image_a, labels_a), (image_b, labels_b), (image_c, labels_c) = blob_pairs(3, start=10)
    tifffile.imwrite(tmp_path / "a.tif", image_a.astype(np.uint16) * 100)
    iio.imwrite(tmp_path / "a_labels.png", labels_a.astype(np.uint8))
    np.save(tmp_path / "stack.npy", np.stack([image_b, image_c]))
    tifffile.imwrite(tmp_path / "stack_labels.tif", np.stack([labels_b, labels_c]))
    out = tmp_path / "tuned.pt"
    status = main(
        [
            "finetune",
            "--images",
            str(tmp_path / "a.tif"),
            str(tmp_path / "stack.npy"),
            "--labels",
            str(tmp_path / "a_labels.png"),
            str(tmp_path / "stack_labels.tif"),
            "--model",
            str(base),
            "--out",
            str(out),
            "--steps",
            "3",
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "3 2D examples" in printed.out
    assert "before 0." in printed.out and "after 0." in printed.out
    assert f"saved {out}" in printed.out and "step 3/3" in printed.err
    tuned = load_model(out, device="cpu", dtype="float32")
    assert tuned.config == TINY
    state, before = tuned.state_dict(), start.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in before if k.startswith("image_encoder."))
    assert any(
        not torch.equal(state[k], before[k]) for k in before if k.startswith("mask_decoder.")
    )
    stored = torch.load(out, weights_only=True)[finetuning.METADATA_KEY]
    assert stored["base_model"] == str(base) and stored["steps"] == 3


def test_cli_finetune_reports_user_errors(tmp_path, capsys):
    np.save(tmp_path / "image.npy", np.zeros((32, 32), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((32, 32), np.float32))
    common = ["--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.pt")]
    images = ["--images", str(tmp_path / "image.npy")]
    assert main(["finetune", *images, "--labels", "a", "b", *common]) == 2
    assert "one label file per image" in capsys.readouterr().err
    assert main(["finetune", *images, "--labels", str(tmp_path / "labels.npy"), *common]) == 1
    assert "not label ids" in capsys.readouterr().err
    np.save(tmp_path / "labels.npy", np.ones((32, 32), np.int32))
    assert main(["finetune", *images, "--labels", str(tmp_path / "labels.npy"), *common]) == 1
    assert "No checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
