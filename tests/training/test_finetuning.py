"""Fine-tuning on a user's pairs: held-out split, held-out IoU checked as training goes
and the best weights kept, the checkpoint it writes, progress, cancellation, nD slices,
labels that are not id images, and `napari-sam finetune`."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_sam.cli import main
from napari_sam.model import build_sam
from napari_sam.training import finetuning
from napari_sam.training.data import LabelledImage
from napari_sam.training.evaluate import BestWeights, single_click_iou
from napari_sam.training.finetuning import (
    FinetuneWarning,
    default_config,
    finetune,
    finetuned_models,
    labelled_slices,
    save_finetuned,
    split_holdout,
)
from napari_sam.training.loop import trainable_parameters
from napari_sam.training.synthetic import generate
from napari_sam.zoo import load_model
from tests.reference import TINY, randomize_
from tests.training.test_training import blobs


@pytest.fixture(autouse=True)
def fresh_finetuned_list(monkeypatch):
    monkeypatch.setattr(finetuning, "_finetuned", {})


def blob_pairs(count: int, start: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    items = [blobs(np.random.default_rng(start + i)) for i in range(count)]
    return [(item.image, item.levels[0]) for item in items]


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(TINY).eval()


def quick(steps: int, **changes) -> object:
    """Decoder-only settings with little work per step (fast tests)."""
    return dataclasses.replace(
        default_config(steps, decoder_only=True),
        batch_size=1,
        objects_per_image=2,
        correction_rounds=0,
        warmup_steps=1,
        **changes,
    )


def cells(seed: int = 0, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A generated microscopy image and its cell labels (the bundled model knows these)."""
    sample = generate(np.random.default_rng(seed), (size, size))
    return sample.image, sample.cells


def held_out_iou(model, pairs, holdout: float = 0.2, seed: int = 0) -> float:
    """Single-click IoU on the objects `finetune` holds out, measured independently."""
    items = [LabelledImage(image, [labels]) for image, labels in pairs]
    held_out = split_holdout(items, holdout, seed)[1]
    clicks = max(len(np.unique(item.levels[0])) - 1 for item in held_out)
    return single_click_iou(model, held_out, clicks, seed)


def same_weights(a, b) -> bool:
    b_state = b.state_dict()
    return all(torch.equal(value, b_state[key]) for key, value in a.state_dict().items())


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
    with warnings.catch_warnings():
        warnings.simplefilter("error", FinetuneWarning)  # it improves: nothing to warn of
        result = finetune(
            model,
            pairs,
            out_path=path,
            config=config,
            progress=lambda step, total, stats: steps_seen.append((step, total)),
        )
    assert steps_seen == [(s, 30) for s in range(1, 31)]
    assert not result.cancelled and result.steps_done == 30 and result.path == path
    # Checked at the start and every 3 steps (about ten checks by default); the best kept.
    assert [step for step, _ in result.evaluations] == list(range(0, 31, 3))
    assert result.before_iou == result.evaluations[0][1]
    assert result.after_iou == max(iou for _, iou in result.evaluations)
    assert result.improved is True and result.best_step > 0
    assert [h["step"] for h in result.history if "held_out_iou" in h] == list(range(3, 31, 3))
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
    with pytest.warns(FinetuneWarning, match="nothing could be checked"):
        result = finetune(
            model, blob_pairs(2), steps=2, decoder_only=False, holdout=0.0, progress=False
        )
    assert result.steps_done == 2 and result.path is None
    assert np.isnan(result.before_iou) and np.isnan(result.after_iou)  # nothing held out
    assert result.improved is None and result.best_step == 2 and result.evaluations == []
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
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FinetuneWarning)  # the user stopped it: no warning
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
    # Only the start was checked (every 5 steps): the model is back to it.
    assert result.evaluations == [(0, result.before_iou)] and np.isfinite(result.before_iou)
    assert result.after_iou == result.before_iou and result.best_step == 0
    assert not result.improved and np.isnan(result.final_iou)
    assert same_weights(model, original)


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
    assert f"saved {out}" in printed.out and "step 3/3" in printed.err
    assert "held-out IoU 0." in printed.err  # the checks, as training goes
    stored = torch.load(out, weights_only=True)[finetuning.METADATA_KEY]
    # The outcome is printed; a run that did not help is a warning on stderr.
    told = printed.out if stored["improved"] else printed.err
    assert "held-out objects" in told and (" before" in told) == stored["improved"]
    tuned = load_model(out, device="cpu", dtype="float32")
    assert tuned.config == TINY
    state, before = tuned.state_dict(), start.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in before if k.startswith("image_encoder."))
    # The decoder saved is a trained one only when training beat the start.
    changed = any(
        not torch.equal(state[k], before[k]) for k in before if k.startswith("mask_decoder.")
    )
    assert changed == stored["improved"] == (stored["best_step"] > 0)
    assert stored["base_model"] == str(base) and stored["steps"] == 3


def test_cli_finetune_reports_user_errors(tmp_path, capsys):
    np.save(tmp_path / "image.npy", np.zeros((32, 32), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((32, 32), np.float32))
    common = ["--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.pt")]
    images = ["--images", str(tmp_path / "image.npy")]
    assert main(["finetune", *images, "--labels", "a", "b", *common]) == 2
    assert "one label file per image" in capsys.readouterr().err
    assert main(["finetune", *images, "--labels", str(tmp_path / "labels.npy"), *common]) == 1
    assert "float32 values; labels must be integer id images" in capsys.readouterr().err
    np.save(tmp_path / "labels.npy", np.ones((32, 32), np.int32))
    assert main(["finetune", *images, "--labels", str(tmp_path / "labels.npy"), *common]) == 1
    assert "No checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


# -- never worse: the best checked weights are kept -------------------------------------
def test_a_run_that_makes_the_model_worse_keeps_and_saves_the_starting_weights(tmp_path):
    """The reported case: the bundled model fine-tuned on one small image got worse on
    the held-out objects and was saved so. Here a far too high learning rate makes
    every step worse: the starting weights must be what is kept, saved and reported."""
    model = load_model("tiny_cells", device="cpu", dtype="float32")
    original = copy.deepcopy(model)
    pairs = [cells(0)]
    path = tmp_path / "worse.pt"
    with pytest.warns(FinetuneWarning, match="did not improve") as caught:
        result = finetune(
            model,
            pairs,
            out_path=path,
            config=quick(4, learning_rate=0.5),
            eval_every=2,
            progress=False,
        )
    start = held_out_iou(original, pairs)
    assert start > 0.2  # a model that starts good, on objects it never trains on
    assert [step for step, _ in result.evaluations] == [0, 2, 4]
    assert result.evaluations[0][1] == pytest.approx(start)
    assert all(iou < start - 0.1 for _, iou in result.evaluations[1:])  # training hurt
    assert result.final_iou == result.evaluations[-1][1] < start - 0.1
    assert result.improved is False and result.best_step == 0
    assert result.before_iou == result.after_iou == max(iou for _, iou in result.evaluations)
    assert str(path) in str(caught[0].message) and f"{start:.3f}" in str(caught[0].message)
    # The saved checkpoint clicks as well as the best seen, the start: it is the start.
    saved = load_model(path, device="cpu", dtype="float32")
    assert held_out_iou(saved, pairs) == pytest.approx(result.after_iou)
    assert same_weights(saved, original) and same_weights(model, original)


def test_the_best_checked_weights_are_restored_not_the_last(tmp_path, monkeypatch):
    """Held-out scores scripted so that the best check is in the middle of the run: the
    model and the file hold the weights of that step, not the start or the end."""
    scripted = iter([0.30, 0.40, 0.70, 0.50, 0.45])  # steps 0, 2, 4, 6, 7
    monkeypatch.setattr(finetuning.HeldOutScore, "__call__", lambda self: next(scripted))
    model = tiny()
    at_check = {}

    def keep(step, total, stats):
        if "held_out_iou" in stats:
            at_check[step] = copy.deepcopy(model.state_dict())

    path = tmp_path / "best.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FinetuneWarning)
        result = finetune(
            model,
            blob_pairs(2),
            out_path=path,
            config=quick(7, learning_rate=3e-3),
            eval_every=2,
            progress=keep,
        )
    assert result.evaluations == [(0, 0.30), (2, 0.40), (4, 0.70), (6, 0.50), (7, 0.45)]
    assert result.best_step == 4 and result.after_iou == 0.70 and result.final_iou == 0.45
    assert result.improved is True and result.before_iou == 0.30
    best, last = at_check[4], at_check[7]
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the steps differ
    saved = torch.load(path, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]) and torch.equal(saved[key], best[key]), key
    stored = saved[finetuning.METADATA_KEY]
    assert stored["best_step"] == 4 and stored["after_iou"] == 0.70
    assert stored["final_iou"] == 0.45 and stored["improved"] is True


def test_the_best_weights_copy_holds_only_what_trains():
    model = tiny()
    decoder = BestWeights(trainable_parameters(model, freeze_encoder=True))
    decoder.offer(0, 0.5)
    assert decoder.state and not any(k.startswith("image_encoder.") for k in decoder.state)
    assert set(decoder.state) == {
        k for k, _ in model.named_parameters() if not k.startswith("image_encoder.")
    }
    assert all(v.device.type == "cpu" for v in decoder.state.values())
    kept = copy.deepcopy(model.state_dict())
    decoder.offer(1, 0.4)  # worse: not copied
    decoder.offer(2, float("nan"))  # no score: not copied
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)
    decoder.restore()
    assert decoder.step == 0 and decoder.iou == 0.5
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    full = BestWeights(trainable_parameters(model, freeze_encoder=False))
    full.offer(0, float("nan"))
    full.offer(3, 0.1)  # any score beats none
    assert full.step == 3 and set(full.state) == {k for k, _ in model.named_parameters()}


def test_progress_is_a_console_bar_by_default_and_off_with_false(capsys):
    finetune(tiny(), blob_pairs(2), config=quick(3), eval_every=2, warn=False)
    bar = capsys.readouterr().err
    assert "fine-tune" in bar and "3/3" in bar and "held-out IoU" in bar
    finetune(tiny(), blob_pairs(2), config=quick(3), eval_every=2, progress=False, warn=False)
    assert capsys.readouterr().err == ""
    seen = []
    finetune(
        tiny(),
        blob_pairs(2),
        config=quick(3),
        eval_every=2,
        warn=False,
        progress=lambda step, total, stats: seen.append((step, total, sorted(stats))),
    )
    assert capsys.readouterr().err == ""  # a callback replaces the bar
    assert [(step, total) for step, total, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert ["held_out_iou" in keys for _, _, keys in seen] == [False, True, True]


def test_eval_every_must_be_a_positive_step_count():
    with pytest.raises(ValueError, match="eval_every"):
        finetune(tiny(), blob_pairs(2), config=quick(3), eval_every=0, progress=False)


def test_cli_says_when_fine_tuning_did_not_help_and_saves_the_starting_model(tmp_path, capsys):
    image, labels = cells(0)
    iio.imwrite(tmp_path / "cells.png", image)
    iio.imwrite(tmp_path / "cells_labels.png", labels.astype(np.uint8))
    out = tmp_path / "tuned.pt"
    args = ["finetune", "--images", str(tmp_path / "cells.png")]
    args += ["--labels", str(tmp_path / "cells_labels.png"), "--model", "tiny_cells"]
    args += ["--out", str(out), "--steps", "2", "--lr", "0.5", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FinetuneWarning)  # said as a line, not a warning
        status = main(args)
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "napari-sam: warning: Fine-tuning did not improve" in printed.err
    assert "starting weights are kept" in printed.err and f"saved {out}" in printed.out
    saved = load_model(out, device="cpu", dtype="float32")
    assert same_weights(saved, load_model("tiny_cells", device="cpu", dtype="float32"))


# -- labels that are not integer id images ----------------------------------------------
def colour_coded(labels: np.ndarray) -> np.ndarray:
    """Labels as an RGB image: black background, one colour per object."""
    colours = np.random.default_rng(0).integers(40, 256, (labels.max() + 1, 3), dtype=np.uint8)
    colours[0] = 0
    return colours[labels]


WRONG_LABELS = {
    "colour-coded": (lambda labels: colour_coded(labels), "look colour-coded"),
    "float": (lambda labels: labels.astype(np.float32), "float32 values"),
    "negative": (lambda labels: np.where(labels > 0, labels, -1), "negative ids"),
    "binary": (lambda labels: labels > 0, "binary mask"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_LABELS))
def test_finetune_and_labelled_slices_refuse_labels_that_are_not_id_images(kind):
    ((image, labels),) = blob_pairs(1)
    convert, says = WRONG_LABELS[kind]
    wrong = convert(labels)
    needs = "labels must be integer id images (H, W) with 0 as background"
    for call in (
        lambda: finetune(tiny(), [(image, wrong)], steps=1, progress=False),
        lambda: finetune(tiny(), [LabelledImage(image, [wrong])], steps=1, progress=False),
        lambda: labelled_slices(image, wrong),
        lambda: labelled_slices(np.stack([image] * 3, -1), wrong, rgb=True),
        lambda: labelled_slices(np.stack([image] * 2), np.stack([wrong] * 2)),
    ):
        with pytest.raises(ValueError, match=says) as raised:
            call()
        assert needs in str(raised.value)


def test_the_advice_for_colour_coded_labels_converts_them():
    ((_, labels),) = blob_pairs(1)
    rgb = colour_coded(labels)
    with pytest.raises(ValueError) as raised:
        labelled_slices(rgb[..., 0], rgb)
    advice = str(raised.value).split("Convert with: ")[1].split(" (black")[0]
    scope = {"np": np, "rgb": rgb}
    exec(advice, scope)
    ids = scope["labels"]
    assert ids.shape == labels.shape and ids[labels == 0].max() == 0  # black becomes 0
    assert len(np.unique(ids)) == len(np.unique(labels))  # one id per object
    for object_id in np.unique(labels):
        assert len(np.unique(ids[labels == object_id])) == 1
    assert labelled_slices(rgb[..., 0], ids)[0].levels[0].shape == labels.shape


def test_cli_refuses_labels_that_are_not_id_images(tmp_path, capsys):
    ((image, labels),) = blob_pairs(1)
    rgb_image = np.stack([image] * 3, -1)
    iio.imwrite(tmp_path / "image.png", rgb_image)
    files = {
        "colour.png": (colour_coded(labels), "look colour-coded"),
        "colour.tif": (colour_coded(labels), "look colour-coded"),
        "float.npy": (labels.astype(np.float64), "float64 values"),
        "negative.tif": (np.where(labels > 0, labels, -1).astype(np.int16), "negative ids"),
    }
    for name, (wrong, says) in files.items():
        path = tmp_path / name
        if name.endswith(".png"):
            iio.imwrite(path, wrong)
        elif name.endswith(".tif"):
            tifffile.imwrite(path, wrong)
        else:
            np.save(path, wrong)
        out = tmp_path / f"{name}.pt"
        args = ["finetune", "--images", str(tmp_path / "image.png"), "--labels", str(path)]
        status = main([*args, "--model", "tiny_cells", "--out", str(out), "--steps", "1"])
        err = capsys.readouterr().err
        assert status == 1, (name, err)
        assert says in err and str(path) in err and "integer id images" in err, name
        assert not out.exists()


def test_cli_reads_palette_label_images_as_their_ids(tmp_path):
    from PIL import Image

    from napari_sam.cli import _read_array

    ((_, labels),) = blob_pairs(1)
    height, width = labels.shape
    indexed = Image.frombytes("P", (width, height), labels.astype(np.uint8).tobytes())
    indexed.putpalette(colour_coded(np.arange(256)).ravel().tolist())
    indexed.save(tmp_path / "labels.png")
    assert np.array_equal(_read_array(str(tmp_path / "labels.png"), labels=True), labels)
    assert _read_array(str(tmp_path / "labels.png")).shape == (*labels.shape, 3)  # image
