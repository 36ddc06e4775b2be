"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, seeds,
resumable checkpoints, progress through a callback, CPU or CUDA (bfloat16 autocast)."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Sam
from .data import Batch, Source, draw_batch
from .dense import DenseHead, dense_loss
from .losses import sam_loss
from .prompting import correction_points, first_points, jittered_boxes


@dataclass
class TrainingConfig:
    """Settings of a training run (see `train`); a step trains on `batch_size` images with
    up to `objects_per_image` prompted objects each."""

    steps: int = 200
    batch_size: int = 2  # images per step
    objects_per_image: int = 8
    correction_rounds: int = 2  # extra rounds, each adding a point from the error region
    box_fraction: float = 0.5  # share of objects prompted with a box instead of a point
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    freeze_encoder: bool = False  # decoder-only fine-tuning: fast on a CPU
    scale_range: tuple[float, float] = (0.5, 2.0)
    seed: int = 0
    checkpoint_every: int = 0
    checkpoint_path: str | None = None  # resumed from when it exists
    autocast: bool = True  # bfloat16 autocast on CUDA
    workers: int = 0  # processes drawing batches ahead (0: in the loop); needs a picklable source
    dense_weight: float = 0.0  # weight of the encoder's dense auxiliary loss (see .dense)
    # Train only the parameters whose names start with one of these (empty: all that
    # freeze_encoder leaves), e.g. ("mask_decoder.iou_prediction_head.",) to calibrate
    # the predicted IoUs while every mask stays exactly as it was.
    train_only: tuple[str, ...] = ()
    # What each output's predicted IoU is trained towards: "target", its IoU with the
    # prompted object (the paper's); "readings", with the object under the click it
    # matches best at any level of the labels (cell, nucleus, nucleolus). "readings" made
    # the bundled model's preselection better on generated images but worse on real ones
    # (README, the bundled model): the default stays the paper's.
    iou_target: str = "target"


# progress(step, total_steps, statistics) -> None
Progress = Callable[[int, int, dict], None]


def _schedule(config: TrainingConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return factor


def _batch_args(source: Source, config: TrainingConfig, img_size: int, step: int) -> tuple:
    return (
        source,
        config.seed,
        step,
        config.batch_size,
        img_size,
        config.scale_range,
        config.objects_per_image,
    )


def _batches(
    source: Source, config: TrainingConfig, img_size: int, steps: range
) -> Iterator[Batch]:
    """The batches of `steps` in order, drawn ahead by `config.workers` processes."""
    if config.workers <= 0:
        for step in steps:
            yield draw_batch(*_batch_args(source, config, img_size, step))
        return
    # spawn: forking a process that has started CUDA or OpenMP threads is unsafe
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        config.workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
    )
    try:
        upcoming = iter(steps)
        pending = deque(
            pool.submit(draw_batch, *_batch_args(source, config, img_size, step))
            for step in itertools.islice(upcoming, 2 * config.workers)
        )
        while pending:
            batch = pending.popleft().result()
            for step in itertools.islice(upcoming, 1):
                args = _batch_args(source, config, img_size, step)
                pending.append(pool.submit(draw_batch, *args))
            yield batch
    finally:  # also when the loop stops early: drop what was drawn ahead
        pool.shutdown(wait=False, cancel_futures=True)


def _exit_with(parent: int) -> None:
    """Worker initialiser: end the worker once the training process is gone (killed
    before it could shut its pool down), instead of lingering."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _targets(
    batch: Batch, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input pixels (B, 3, h, w) uint8 padded to the largest example, the true masks
    (N, size, size) of all chosen objects, the index of each one's image (N,) and the
    label images (B, depth, size, size)."""
    examples = batch.examples
    height = max(ex.pixels.shape[0] for ex in examples)
    width = max(ex.pixels.shape[1] for ex in examples)
    depth = max(len(ex.levels) for ex in examples)
    pixels = np.zeros((len(examples), 3, height, width), np.uint8)
    levels = np.zeros((len(examples), depth, size, size), np.int32)
    owner, level, ids = [], [], []
    for index, (example, objects) in enumerate(zip(examples, batch.objects, strict=True)):
        h, w = example.pixels.shape[:2]
        pixels[index, :, :h, :w] = example.pixels.transpose(2, 0, 1)
        levels[index, : len(example.levels), :h, :w] = example.levels
        for object_level, object_id in objects:
            owner.append(index)
            level.append(object_level)
            ids.append(object_id)
    # Masks are made on the device: N masks cost N times more to move than the labels.
    levels_t = torch.from_numpy(levels).to(device)
    owner_t, level_t, ids_t = (
        torch.tensor(v, dtype=torch.long, device=device) for v in (owner, level, ids)
    )
    masks = levels_t[owner_t, level_t] == ids_t[:, None, None]
    return torch.from_numpy(pixels).to(device), masks, owner_t, levels_t


def _readings(levels: torch.Tensor, owner: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, depth, size, size) bool: the object of each level under each click (empty where
    the click lies in none), from label images (B, depth, size, size), the clicks'
    images (N,) and (row, col) points (N, 2)."""
    rows, cols = points.long().unbind(1)
    stack = levels[owner]  # (N, depth, size, size)
    ids = stack[torch.arange(len(owner), device=stack.device), :, rows, cols]  # (N, depth)
    return (stack == ids[:, :, None, None]) & (ids[:, :, None, None] > 0)


def _decode(model: Sam, features, points, labels, boxes, mask_input, multimask: bool):
    """Decode prompts in (row, col) image-frame terms; logits at the input size."""
    prompt = None if points is None else (points.flip(-1), labels)
    xyxy = None if boxes is None else boxes[:, [1, 0, 3, 2]]
    low, iou = model.decode(features, prompt, xyxy, mask_input, multimask)
    size = model.img_size
    logits = F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)
    return low, logits, iou


def _append(prompts: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """(N, k, ...) prompts so far (None: none yet) plus one more per object (N, ...)."""
    return new[:, None] if prompts is None else torch.cat([prompts, new[:, None]], 1)


def training_step(
    model: Sam,
    batch: Batch,
    generator: torch.Generator | None,
    config: TrainingConfig,
    dense_head: DenseHead | None = None,
) -> tuple[torch.Tensor, dict]:
    """Loss of one batch, with interactive prompting simulated round by round.

    All objects of all images are decoded together: once with their first prompt (a
    point, with the 3 ambiguity outputs, or a box), then once per correction round with
    a point from the error region added and the previous best logits as mask input.
    With a `dense_head`, its loss on all pixels is added, weighted by `config.dense_weight`.
    """
    size, device = model.img_size, model.device
    pixels, truth, owner, levels = _targets(batch, size, device)
    dtype = model.image_encoder.patch_embed.proj.weight.dtype
    with torch.set_grad_enabled(not config.freeze_encoder and torch.is_grad_enabled()):
        features = model.image_encoder(model.preprocess(pixels).to(dtype)).float()
    dense = None
    if dense_head is not None:
        dense = config.dense_weight * dense_loss(dense_head, features, levels)
    if len(truth) == 0:
        loss = features.sum() * 0.0 if dense is None else dense  # keeps the graph
        return loss, _statistics(loss, float("nan"), dense)

    boxed = torch.rand(len(truth), generator=generator, device=device) < config.box_fraction
    losses, first_ious = [], []
    for use_box in (False, True):
        chosen = torch.nonzero(boxed == use_box)[:, 0]
        if len(chosen) == 0:
            continue
        target, image_features = truth[chosen], features[owner[chosen]]
        points = labels = boxes = None
        if use_box:
            boxes = jittered_boxes(target, generator)
        else:
            points = first_points(target, generator)[:, None]
            labels = torch.ones(len(chosen), 1, dtype=torch.long, device=device)
        low, logits, iou = _decode(model, image_features, points, labels, boxes, None, not use_box)
        readings = None
        if config.iou_target == "readings" and not use_box:
            readings = _readings(levels, owner[chosen], points[:, 0])
        loss, _, achieved = sam_loss(logits, iou, target, readings)
        losses.append(loss)
        first_ious.append(achieved.detach())
        rows = torch.arange(len(chosen), device=device)
        for _ in range(config.correction_rounds):
            best = iou.detach().argmax(dim=1)
            previous = low.detach()[rows, best][:, None]
            new_points, new_labels = correction_points(
                logits.detach()[rows, best] > 0, target, generator
            )
            points, labels = _append(points, new_points), _append(labels, new_labels)
            low, logits, iou = _decode(
                model, image_features, points, labels, boxes, previous, False
            )
            loss, _, _ = sam_loss(logits, iou, target)
            losses.append(loss)
    prompted = torch.stack(losses).mean()
    stats = _statistics(prompted, torch.cat(first_ious).mean().item(), dense)
    return (prompted if dense is None else prompted + dense), stats


def _statistics(prompted: torch.Tensor, iou: float, dense: torch.Tensor | None) -> dict:
    """A step's report: the prompted loss, the first prompts' IoU and the dense loss."""
    stats = {"loss": prompted.item(), "iou": iou}
    if dense is not None:
        stats["dense"] = dense.item()
    return stats


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The prompt sampler of one step: a resumed run draws what an uninterrupted one did."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def save_checkpoint(
    path: str | Path,
    model: Sam,
    optimizer,
    scheduler,
    step: int,
    config: TrainingConfig,
    dense_head: DenseHead | None = None,
) -> None:
    """Everything needed to resume, written atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "training_config": asdict(config),
        "config": model.config.to_dict() if model.config else None,
    }
    if dense_head is not None:
        state["dense_head"] = dense_head.state_dict()
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def _optimise(model, batch, step, config, optimizer, scheduler, trainable, dense_head) -> dict:
    """One optimiser step on one batch; its statistics."""
    generator = step_generator(config.seed, step, model.device)
    autocast = config.autocast and model.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss, stats = training_step(model, batch, generator, config, dense_head)
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
    scheduler.step()
    stats["step"] = step + 1
    stats["lr"] = scheduler.get_last_lr()[0]
    return stats


def trainable_parameters(
    model: Sam, freeze_encoder: bool, only: tuple[str, ...] = ()
) -> dict[str, torch.nn.Parameter]:
    """The parameters a run trains, by name: all, or all but the image encoder's, and of
    those only the ones starting with a prefix in `only` when it is given. Raises
    ValueError when `only` names nothing."""
    chosen = {
        name: p
        for name, p in model.named_parameters()
        if not (freeze_encoder and name.startswith("image_encoder."))
        and (not only or name.startswith(tuple(only)))
    }
    if only and not chosen:
        raise ValueError(f"train_only {only!r} matches no trainable parameter of the model.")
    return chosen


def train(
    model: Sam,
    source: Source,
    config: TrainingConfig,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Train `model` in place on examples drawn from `source`; returns per-step stats.

    Resumes from `config.checkpoint_path` when that file exists (same model and config),
    and writes it every `checkpoint_every` steps and at the end. `should_stop` is polled
    between steps (cancellation). On CUDA the forward pass runs under bfloat16 autocast.
    """
    if config.iou_target not in ("target", "readings"):
        raise ValueError(f"iou_target must be 'target' or 'readings'; got {config.iou_target!r}.")
    torch.manual_seed(config.seed)
    model.train()
    chosen = trainable_parameters(model, config.freeze_encoder, config.train_only)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    trainable = list(chosen.values())
    dense_head = None
    if config.dense_weight > 0 and not config.freeze_encoder:
        patch_size = model.image_encoder.patch_embed.proj.kernel_size[0]
        dense_head = DenseHead(model.prompt_encoder.embed_dim, patch_size)
        trainable += list(dense_head.to(model.device).parameters())
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    start = 0
    if config.checkpoint_path and Path(config.checkpoint_path).exists():
        state = torch.load(config.checkpoint_path, map_location=model.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if dense_head is not None and "dense_head" in state:
            dense_head.load_state_dict(state["dense_head"])
        start = int(state["step"])
    # One generator per step keeps a resumed run identical to an uninterrupted one.
    history = []
    batches = _batches(source, config, model.img_size, range(start, config.steps))
    try:
        for step, batch in zip(range(start, config.steps), batches, strict=False):
            if should_stop is not None and should_stop():
                break
            stats = _optimise(
                model, batch, step, config, optimizer, scheduler, trainable, dense_head
            )
            history.append(stats)
            if progress is not None:
                progress(step + 1, config.steps, stats)
            every = config.checkpoint_every
            if config.checkpoint_path and every and (step + 1) % every == 0:
                save_checkpoint(
                    config.checkpoint_path,
                    model,
                    optimizer,
                    scheduler,
                    step + 1,
                    config,
                    dense_head,
                )
    finally:
        batches.close()
    if config.checkpoint_path:
        save_checkpoint(
            config.checkpoint_path,
            model,
            optimizer,
            scheduler,
            start + len(history),
            config,
            dense_head,
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history
