"""Training: the loss and its min-over-3 rule, simulated prompting, the loop."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_sam.model import build_sam
from napari_sam.training.data import (
    LabelledImage,
    augment,
    choose_objects,
    draw_batch,
    from_pairs,
)
from napari_sam.training.dense import DenseHead, dense_targets
from napari_sam.training.evaluate import click_scores, draw_clicks, single_click_iou
from napari_sam.training.loop import TrainingConfig, step_generator, train, training_step
from napari_sam.training.losses import dice_loss, focal_loss, sam_loss
from napari_sam.training.prompting import (
    NO_POINT,
    correction_points,
    first_points,
    jittered_boxes,
)
from napari_sam.training.synthetic import generate
from tests.reference import TINY


def disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) < radius


def test_focal_and_dice_reward_the_right_mask():
    target = torch.from_numpy(disk((32, 32), (16, 16), 8)).float()
    good = (target * 2 - 1) * 10
    bad = -good
    assert focal_loss(good, target) < 1e-4 < focal_loss(bad, target)
    assert dice_loss(good, target) < 0.01 and dice_loss(bad, target) > 0.99


def test_only_the_lowest_loss_output_is_trained():
    target = torch.from_numpy(disk((32, 32), (16, 16), 8)).float()[None]
    logits = torch.stack([-(target[0] * 2 - 1), target[0] * 2 - 1, torch.zeros(32, 32)])[None]
    logits = (logits * 5).requires_grad_()
    iou_pred = torch.full((1, 3), 0.5, requires_grad=True)
    loss, chosen, achieved = sam_loss(logits, iou_pred, target)
    loss.backward()
    assert chosen.item() == 1 and achieved.item() == pytest.approx(1.0)
    per_output = logits.grad.abs().sum(dim=(2, 3))[0]
    assert per_output[1] > 0 and per_output[0] == 0 and per_output[2] == 0
    # every IoU prediction is trained towards what its mask achieved (0, 1, 0)
    assert iou_pred.grad[0, 1] < 0 < iou_pred.grad[0, 0]


def test_an_output_matching_another_correct_reading_is_scored_by_it():
    """The target is the cell; output 0 is exactly its nucleus, another correct reading
    of the click: with the readings its IoU target is 1, without them 0.25 (the
    nucleus's share of the cell). Output 2 matches nothing (0) either way, and an
    empty reading (no nucleolus under the click) counts for nothing."""
    cell = torch.from_numpy(disk((32, 32), (16, 16), 12))
    nucleus = torch.from_numpy(disk((32, 32), (16, 16), 6))
    far = torch.from_numpy(disk((32, 32), (3, 3), 2))
    logits = torch.stack([nucleus, cell, far]).float()[None] * 20 - 10
    iou_pred = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    readings = torch.stack([cell, nucleus, torch.zeros_like(cell)])[None]
    loss, chosen, achieved = sam_loss(logits, iou_pred, cell.float()[None], readings)
    assert chosen.item() == 1 and achieved.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.equal(iou_pred.grad, torch.zeros(1, 3))  # every prediction right
    plain_pred = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    sam_loss(logits, plain_pred, cell.float()[None])[0].backward()
    share = (nucleus.sum() / cell.sum()).item()
    assert plain_pred.grad[0, 0].item() == pytest.approx(2 * (1.0 - share) / 3)


def test_the_readings_of_a_click_are_the_objects_of_each_level_under_it():
    from napari_sam.training.loop import _readings

    levels = torch.zeros(2, 3, 8, 8, dtype=torch.int32)
    levels[1, 0, 2:7, 2:7] = 4  # a cell of image 1
    levels[1, 1, 3:6, 3:6] = 9  # its nucleus
    readings = _readings(levels, torch.tensor([1, 1]), torch.tensor([[4.0, 4.0], [2.0, 6.0]]))
    assert readings.shape == (2, 3, 8, 8)
    assert torch.equal(readings[0, 0], levels[1, 0] == 4)
    assert torch.equal(readings[0, 1], levels[1, 1] == 9)
    assert not readings[0, 2].any()  # no nucleolus there
    assert readings[1, 0].any() and not readings[1, 1:].any()  # in the cell, not the nucleus


def test_correction_points_lie_in_the_error_region():
    generator = torch.Generator().manual_seed(0)
    truth = torch.from_numpy(disk((40, 40), (20, 20), 10)).expand(100, -1, -1)
    predicted = torch.from_numpy(disk((40, 40), (20, 26), 10))  # misses left, spills right
    predicted = predicted.expand(100, -1, -1).clone()
    predicted[-1] = truth[-1]  # exact: nothing to correct
    points, labels = correction_points(predicted, truth, generator)
    rows, cols = points[:-1, 0].long(), points[:-1, 1].long()
    index = torch.arange(99)
    assert torch.all(predicted[index, rows, cols] != truth[index, rows, cols])
    assert torch.equal(labels[:-1], truth[index, rows, cols].long())
    assert set(labels[:-1].tolist()) == {0, 1}
    assert labels[-1] == NO_POINT


def test_first_point_and_box_come_from_the_object():
    generator = torch.Generator().manual_seed(1)
    masks = torch.from_numpy(disk((50, 60), (25, 30), 12)).expand(50, -1, -1)
    points = first_points(masks, generator).long()
    assert torch.all(masks[torch.arange(50), points[:, 0], points[:, 1]])
    assert len({tuple(p) for p in points.tolist()}) > 25  # spread over the object
    boxes = jittered_boxes(masks, generator)
    assert torch.all(boxes >= 0) and torch.all(boxes[:, 2] <= 49) and torch.all(boxes[:, 3] <= 59)
    assert torch.all(boxes[:, :2] <= boxes[:, 2:])
    assert torch.all((boxes - torch.tensor([13.0, 18, 37, 42])).abs() <= 12)
    assert (boxes - torch.tensor([13.0, 18, 37, 42])).abs().mean() > 0.3  # jittered


def test_synthetic_images_have_three_nested_levels():
    found_nucleoli = 0
    for seed in range(6):
        sample = generate(np.random.default_rng(seed), (128, 160))
        assert sample.image.shape == (128, 160) and sample.image.dtype in (np.uint8, np.uint16)
        nucleus = sample.nuclei > 0
        assert np.array_equal(sample.nuclei[nucleus], sample.cells[nucleus])  # inside its cell
        for nucleolus_id, cell_id in sample.nucleolus_cell.items():
            assert np.all(sample.nuclei[sample.nucleoli == nucleolus_id] == cell_id)
            found_nucleoli += 1
            row, col = np.argwhere(sample.nucleoli == nucleolus_id)[0]
            assert len(sample.levels_at(row, col)) == 3
    assert found_nucleoli > 0


def test_colour_renderings_show_the_nuclei():
    from napari_sam.training.synthetic import colour_image

    styles = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        sample = generate(rng, (128, 128))
        image = colour_image(rng, sample)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        nucleus = ndi.binary_erosion(sample.nuclei > 0, iterations=2)
        background = ndi.binary_erosion(sample.cells == 0, iterations=2)
        if nucleus.sum() < 20 or background.sum() < 20:
            continue
        contrast = np.abs(image[nucleus].mean(0) - image[background].mean(0)).max()
        assert contrast > 20, seed
        styles.add("stained" if image[background].mean() > 127 else "fluorescence")
    assert styles == {"stained", "fluorescence"}


def test_augment_keeps_labels_aligned_with_pixels():
    image = np.zeros((300, 200), np.uint16)
    labels = np.zeros((300, 200), np.int32)
    image[100:150, 50:120] = 1000
    labels[100:150, 50:120] = 7
    rng = np.random.default_rng(0)
    for _ in range(20):
        example = augment(rng, LabelledImage(image, [labels]), 128)
        assert max(example.pixels.shape[:2]) == 128
        bright = example.pixels[..., 0] > 127
        inside = example.levels[0] == 7
        if inside.any():
            assert (bright == inside).mean() > 0.97
        masks = [example.levels[lv] == i for lv, i in choose_objects(rng, example, 4)]
        assert all(m.shape == example.pixels.shape[:2] for m in masks)


def cells_source():
    def source(rng):
        sample = generate(rng, (192, 192))
        return LabelledImage(sample.image, [sample.cells, sample.nuclei, sample.nucleoli])

    return source


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_sam(TINY)
    image = np.zeros((128, 128), np.uint8)
    labels = np.zeros((128, 128), np.int32)
    for i, (r, c) in enumerate([(30, 30), (30, 90), (90, 40), (95, 95)], start=1):
        labels[disk((128, 128), (r, c), 18)] = i
    image[labels > 0] = 200
    source = from_pairs([LabelledImage(image, [labels])])
    config = TrainingConfig(steps=25, learning_rate=1e-3, correction_rounds=1, warmup_steps=2)

    def batch(step):
        return draw_batch(source, 99, step, 2, TINY.img_size, config.scale_range, 8)

    def loss_now():
        model.eval()
        with torch.no_grad():
            return np.mean(
                [
                    training_step(model, batch(s), step_generator(0, s, model.device), config)[
                        0
                    ].item()
                    for s in range(3)
                ]
            )

    before = loss_now()
    history = train(model, source, config)
    assert len(history) == 25 and all(np.isfinite(h["loss"]) for h in history)
    assert loss_now() < 0.7 * before


def blobs(rng, size=128):
    """Generated bright blobs on a noisy background, one label level."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for i in range(1, rng.integers(3, 7)):
        r = rng.uniform(8, 22)
        c = rng.uniform(r, size - r, 2)
        labels[(np.hypot(yy - c[0], xx - c[1]) < r) & (labels == 0)] = i
    image = (labels > 0) * rng.uniform(120, 220) + rng.normal(30, 10, labels.shape)
    return LabelledImage(np.clip(image, 0, 255).astype(np.uint8), [labels])


def test_single_click_iou_scores_the_top_ranked_mask_against_the_clicked_object():
    """A stand-in decoder with known masks on a 64 x 64 image (the model's 256 px input,
    no padding): top-ranked (IoU 0.9) the left half, second (0.5) exactly the left
    quarter. Objects: the left quarter and the rest. The top mask scores 1024 / 2048 on
    the first and 1024 / 4096 on the second, whatever pixel of each is clicked."""
    model = build_sam(TINY).eval()

    def decode(features, points=None, boxes=None, mask_input=None, multimask_output=True):
        low_res = torch.full((1, 3, 64, 64), -10.0)
        low_res[:, 0, :, :32] = 10.0
        low_res[:, 1, :, :16] = 10.0
        return low_res, torch.tensor([[0.9, 0.5, 0.1]])

    model.decode = decode
    labels = np.ones((64, 64), np.int32)
    labels[:, 16:] = 2
    image = LabelledImage(np.zeros((64, 64), np.uint8), [labels])
    assert single_click_iou(model, [image], clicks_per_image=5) == pytest.approx(0.375)
    # The oracle's best candidate: the quarter (1.0) on the first, the half (0.25) on the
    # second; the preselection is the best on the second only. True IoUs (0.5, 1, 0)
    # and (0.25, 0, 0) against predicted (0.9, 0.5, 0.1): errors 0.4 0.5 0.1 0.65 0.5
    # 0.1. Areas: the half over the quarter (2), over the rest (2/3).
    scores = click_scores(model, [image], draw_clicks([image], 5)).summary()
    assert scores == pytest.approx({"preselected": 0.375, "best": 0.625,
                                    "preselected_is_best": 0.5, "calibration_mae": 0.375,
                                    "area_ratio": (2 + 2 / 3) / 2})  # fmt: skip
    # One tile holds this small image: tiled decoding is the same.
    tiled = click_scores(model, [image], draw_clicks([image], 5), tiled=True).summary()
    assert tiled == pytest.approx(scores)


def test_decoder_only_fine_tuning_raises_held_out_iou():
    torch.manual_seed(0)
    model = build_sam(TINY).eval()
    encoder_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    held_out = [blobs(np.random.default_rng(1000 + i)) for i in range(4)]
    before = single_click_iou(model, held_out)
    config = TrainingConfig(
        steps=40,
        learning_rate=3e-3,
        freeze_encoder=True,
        warmup_steps=2,
        correction_rounds=1,
        box_fraction=0.3,
        scale_range=(1.0, 2.0),
    )
    train(model, blobs, config)
    after = single_click_iou(model, held_out)
    assert after > before + 0.05
    for key, value in model.image_encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key


def test_training_only_the_iou_head_keeps_every_mask():
    """train_only: the IoU head learns, every other weight stays as it was (so every
    mask does); a prefix that names nothing is refused."""
    torch.manual_seed(0)
    model = build_sam(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = "mask_decoder.iou_prediction_head."
    config = TrainingConfig(steps=3, learning_rate=1e-2, correction_rounds=1, warmup_steps=1,
                            freeze_encoder=True, train_only=(head,))  # fmt: skip
    train(model, blobs, config)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(head) for k in changed)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        train(model, blobs, TrainingConfig(steps=1, train_only=("no_such_module.",)))


def test_the_iou_target_setting_picks_what_predicted_ious_learn():
    """"readings" scores an output by the best-matching level under the click, so the
    IoU term (and the loss) of a batch of nested cells differs from "target"'s, while
    the masks' term is the same; anything else is refused before training."""
    torch.manual_seed(0)
    model = build_sam(TINY).eval()
    source = cells_source()
    batch = draw_batch(source, 5, 0, 2, TINY.img_size, (1.0, 1.0), 8)
    losses = {}
    for target in ("target", "readings"):
        config = TrainingConfig(correction_rounds=0, box_fraction=0.0, iou_target=target)
        with torch.no_grad():
            losses[target], stats = training_step(model, batch, step_generator(0, 0, model.device),
                                                  config)  # fmt: skip
        assert np.isfinite(stats["loss"])
    # Readings can only raise an output's achieved IoU: the predicted IoUs of an
    # untrained model (near 0) are further from them.
    assert losses["readings"] > losses["target"]
    with pytest.raises(ValueError, match="iou_target"):
        train(model, source, TrainingConfig(steps=1, iou_target="best"))


def test_the_bundled_recipe_freezes_the_encoder_when_only_the_iou_head_trains(tmp_path):
    from napari_sam.training import bundled

    run = tmp_path / "run.pt"
    head = ("mask_decoder.iou_prediction_head.",)
    config = bundled.training_config(10, 1, 1e-3, 0, 0, run, train_only=head)
    assert config.freeze_encoder and config.dense_weight == 0 and config.train_only == head
    config = bundled.training_config(10, 1, 1e-3, 0, 0, run)
    assert not config.freeze_encoder and config.dense_weight == 1.0 and config.train_only == ()
    config = bundled.training_config(10, 1, 1e-3, 0, 0, run, train_only=("image_encoder.",))
    assert not config.freeze_encoder and config.dense_weight == 1.0


@pytest.mark.parametrize("dense_weight", [0.0, 1.0])
def test_training_resumes_from_its_checkpoint(tmp_path, dense_weight):
    source = cells_source()

    def fresh():
        torch.manual_seed(0)
        return build_sam(TINY)

    def config(**kwargs):
        return TrainingConfig(
            steps=4, correction_rounds=0, batch_size=1, dense_weight=dense_weight, **kwargs
        )

    straight = fresh()
    train(straight, source, config())

    path = tmp_path / "run.pt"
    interrupted = fresh()
    stops = iter([False, False, True])
    train(interrupted, source, config(checkpoint_path=str(path)), should_stop=lambda: next(stops))
    state = torch.load(path, weights_only=True)
    assert state["step"] == 2 and ("dense_head" in state) == (dense_weight > 0)
    resumed = fresh()
    history = train(resumed, source, config(checkpoint_path=str(path)))
    assert [h["step"] for h in history] == [3, 4]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_dense_targets_mark_each_level_and_the_edges_between_instances():
    cells = np.zeros((24, 24), np.int64)
    cells[4:20, 2:12], cells[4:20, 12:22] = 1, 2  # two touching cells
    nuclei = np.zeros_like(cells)
    nuclei[8:14, 4:9] = 1
    targets = dense_targets(torch.from_numpy(np.stack([cells, nuclei]))[None])[0]
    assert targets.shape == (4, 24, 24)
    assert torch.equal(targets[0].bool(), torch.from_numpy(cells > 0))
    assert torch.equal(targets[1].bool(), torch.from_numpy(nuclei > 0))
    assert not targets[2].any()  # no third level given
    edge = targets[3].bool()
    assert edge[12, 11] and edge[12, 12]  # where the two cells touch
    assert edge[3, 6] and edge[8, 6] and edge[12, 20]  # cell and nucleus outlines, 3 px wide
    assert not edge[0, 0] and not edge[16, 6] and not edge[11, 6]  # background, insides


def test_the_dense_head_reads_each_token_into_its_own_patch():
    torch.manual_seed(0)
    head = DenseHead(channels=8, patch_size=4)
    features = torch.zeros(1, 8, 3, 5)
    baseline = head(features)
    features[0, :, 1, 2] = torch.randn(8)
    changed = (head(features) != baseline).any(dim=1)[0]
    assert changed.shape == (12, 20)
    expected = torch.zeros(12, 20, dtype=torch.bool)
    expected[4:8, 8:12] = True
    assert torch.equal(changed, expected)


def test_dense_supervision_teaches_the_encoder_the_outlines():
    torch.manual_seed(0)
    model = build_sam(TINY)
    config = TrainingConfig(
        steps=30, learning_rate=2e-3, correction_rounds=0, warmup_steps=2, dense_weight=1.0
    )
    history = train(model, blobs, config)
    dense = [h["dense"] for h in history]
    assert np.mean(dense[-5:]) < 0.6 * np.mean(dense[:5])


def test_worker_processes_draw_the_same_batches_as_the_loop():
    from napari_sam.training.loop import _batches
    from napari_sam.training.synthetic import synthetic_source

    config = TrainingConfig(batch_size=2, objects_per_image=4, seed=3)
    in_loop = list(_batches(synthetic_source, config, 64, range(5, 8)))
    config.workers = 1
    drawn = list(_batches(synthetic_source, config, 64, range(5, 8)))
    assert len(drawn) == 3
    for a, b in zip(in_loop, drawn, strict=True):
        assert a.objects == b.objects and any(a.objects)
        for x, y in zip(a.examples, b.examples, strict=True):
            assert np.array_equal(x.pixels, y.pixels)
            assert all(np.array_equal(p, q) for p, q in zip(x.levels, y.levels, strict=True))


def test_the_bundled_training_command_writes_a_loadable_model(tmp_path):
    from napari_sam.model import TINY_CELLS
    from napari_sam.training import bundled
    from napari_sam.zoo import load_model, read_checkpoint

    out = tmp_path / "tiny.pt"
    common = ["--batch-size", "1", "--objects-per-image", "2", "--workers", "0"]
    assert bundled.main(["--steps", "2", "--out", str(out), *common]) == 0
    model = load_model(out, device="cpu")
    assert model.config == TINY_CELLS
    assert out.with_suffix(".run.pt").is_file()  # resumable state beside it
    # --init starts from saved weights: one step at learning rate 0 keeps them exactly
    again = tmp_path / "again.pt"
    run = tmp_path / "again.run.pt"
    args = ["--steps", "1", "--lr", "0", "--init", str(out), "--out", str(again)]
    assert bundled.main([*args, "--run-checkpoint", str(run), *common]) == 0
    before, _ = read_checkpoint(out)
    after, _ = read_checkpoint(again)
    for key in before:
        torch.testing.assert_close(after[key], before[key], msg=key)


def test_batch_workers_end_when_the_training_process_is_killed(tmp_path):
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, sys\n"
        "import multiprocessing.process as mp\n"
        "from napari_sam.training.loop import TrainingConfig, _batches\n"
        "from napari_sam.training.synthetic import synthetic_source\n"
        "if __name__ == '__main__':\n"
        "    config = TrainingConfig(batch_size=1, objects_per_image=1, workers=1)\n"
        "    next(_batches(synthetic_source, config, 64, range(100)))\n"
        "    print(*[c.pid for c in mp.active_children()], flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    # (a lingering worker would also hold the pipe open: the timeout then fails the test)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    workers = [int(pid) for pid in done.stdout.split()]
    assert workers, done.stderr

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie awaiting its reaper counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)


def test_a_time_budget_fits_the_step_count_so_the_schedule_ends_on_time(monkeypatch):
    from napari_sam.training import bundled

    clock = [0.0]
    monkeypatch.setattr(bundled.time, "perf_counter", lambda: clock[0])
    config = TrainingConfig(steps=10**7)
    budget = bundled.TimeBudget(config, seconds=100.0, settle=20, every=50)
    step = 0
    while not budget.spent():
        step += 1
        clock[0] += 2.0 if step <= 20 else 1.0  # slow while the workers warm up
        budget.update(step)
    # 40 s for the first 20 steps, then 1 s per step: 60 more steps fit
    assert step == config.steps == 80
    assert clock[0] == pytest.approx(100.0)


def test_the_bundled_command_stops_when_its_minutes_are_up(tmp_path):
    import time

    from napari_sam.training import bundled
    from napari_sam.zoo import read_checkpoint

    out = tmp_path / "tiny.pt"
    start = time.perf_counter()
    args = ["--minutes", "0.05", "--batch-size", "1", "--objects-per-image", "1", "--workers", "0"]
    assert bundled.main([*args, "--out", str(out)]) == 0
    assert time.perf_counter() - start < 30
    steps = torch.load(out, weights_only=True)["napari_sam_finetune"]["steps"]
    assert 1 <= steps < 10**6
    assert read_checkpoint(out)[1] is not None


def test_the_bundled_models_source_shows_cells_at_half_size_too():
    """The bundled model's training images are 256 to 512 px a side, so that its
    crops (up to twice the input side) also show cells shrunk as on a 512 px image."""
    from napari_sam.training.synthetic import multiscale_source

    items = [multiscale_source(np.random.default_rng(i)) for i in range(12)]
    shapes = {item.image.shape[:2] for item in items}
    assert len(shapes) > 6
    assert all(256 <= side < 512 for shape in shapes for side in shape)
    for item in items:
        assert all(labels.shape == item.image.shape[:2] for labels in item.levels)
    largest = max(items, key=lambda item: item.image.size)
    example = augment(np.random.default_rng(0), largest, 256, (2.0, 2.0))
    assert max(example.pixels.shape[:2]) == 256  # the whole image, resized by about half
    cells = len(np.unique(largest.levels[0])) - 1
    assert cells > 0 and len(np.unique(example.levels[0])) - 1 >= 0.8 * cells
