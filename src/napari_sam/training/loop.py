"""The training loop: AdamW, warm-up then cosine decay, gradient clipping, seeds,
resumable checkpoints, progress through a callback, CPU or CUDA (bfloat16 autocast)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Sam
from .data import Example, Source, augment, sample_objects
from .losses import sam_loss
from .prompting import correction_point, first_point, jittered_box


@dataclass
class TrainingConfig:
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


# progress(step, total_steps, statistics) -> None
Progress = Callable[[int, int, dict], None]


def _schedule(config: TrainingConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return factor


def _input_tensor(model: Sam, example: Example) -> torch.Tensor:
    pixels = torch.from_numpy(np.ascontiguousarray(example.pixels)).permute(2, 0, 1)[None]
    return model.preprocess(pixels.to(model.device))


def _padded(mask: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    out[: mask.shape[0], : mask.shape[1]] = mask
    return out


class _Group:
    """Prompts for several objects of one image that are decoded together."""

    def __init__(self, masks: list[np.ndarray], size: int, device: torch.device) -> None:
        self.truth = [_padded(m, size) for m in masks]
        self.target = torch.from_numpy(np.stack(self.truth)).to(device)
        self.points: list[list[tuple[float, float]]] = [[] for _ in masks]
        self.labels: list[list[int]] = [[] for _ in masks]
        self.boxes: np.ndarray | None = None

    def point_tensors(self, device: torch.device):
        if not self.points[0]:
            return None
        xy = torch.tensor([[(c, r) for r, c in pts] for pts in self.points], device=device)
        return xy.float(), torch.tensor(self.labels, device=device)


def _decode_group(model: Sam, features: torch.Tensor, group: _Group, mask_input, multimask: bool):
    boxes = None
    if group.boxes is not None:
        boxes = torch.from_numpy(group.boxes[:, [1, 0, 3, 2]]).float().to(features.device)
    low, iou = model.decode(
        features, group.point_tensors(features.device), boxes, mask_input, multimask
    )
    size = model.img_size
    logits = F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)
    return low, logits, iou


def training_step(
    model: Sam, source: Source, rng: np.random.Generator, config: TrainingConfig
) -> tuple[torch.Tensor, dict]:
    """Loss of one batch, with interactive prompting simulated round by round."""
    size, device = model.img_size, model.device
    examples = [
        augment(rng, source(rng), size, config.scale_range) for _ in range(config.batch_size)
    ]
    pixels = torch.cat([_input_tensor(model, ex) for ex in examples])
    dtype = model.image_encoder.patch_embed.proj.weight.dtype
    with torch.set_grad_enabled(not config.freeze_encoder and torch.is_grad_enabled()):
        features = model.image_encoder(pixels.to(dtype)).float()

    losses, first_ious = [], []
    for index, example in enumerate(examples):
        objects = sample_objects(rng, example, config.objects_per_image)
        if not objects:
            continue
        boxed = rng.random(len(objects)) < config.box_fraction
        for use_box in (False, True):
            chosen = [m for m, b in zip(objects, boxed, strict=True) if b == use_box]
            if not chosen:
                continue
            group = _Group(chosen, size, device)
            if use_box:
                group.boxes = np.stack([jittered_box(rng, m) for m in chosen])
            else:
                for i, m in enumerate(chosen):
                    group.points[i].append(first_point(rng, m))
                    group.labels[i].append(1)
            image_features = features[index : index + 1]
            low, logits, iou = _decode_group(model, image_features, group, None, not use_box)
            loss, _, achieved = sam_loss(logits, iou, group.target)
            losses.append(loss)
            first_ious.append(achieved.mean().item())
            for _ in range(config.correction_rounds):
                best = iou.detach().argmax(dim=1)
                rows = torch.arange(len(chosen), device=device)
                previous = low.detach()[rows, best][:, None]
                predicted = (logits.detach()[rows, best] > 0).cpu().numpy()
                for i, truth in enumerate(group.truth):
                    found = correction_point(rng, predicted[i], truth > 0.5)
                    point, label = found if found else ((0.0, 0.0), -1)
                    group.points[i].append(point)
                    group.labels[i].append(label)
                low, logits, iou = _decode_group(model, image_features, group, previous, False)
                loss, _, _ = sam_loss(logits, iou, group.target)
                losses.append(loss)
    if not losses:
        return features.sum() * 0.0, {"loss": 0.0, "iou": float("nan")}
    total = torch.stack(losses).mean()
    return total, {"loss": total.item(), "iou": float(np.mean(first_ious))}


def save_checkpoint(
    path: str | Path, model: Sam, optimizer, scheduler, step: int, config: TrainingConfig
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
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    partial.replace(path)


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
    torch.manual_seed(config.seed)
    model.train()
    trainable = [
        p
        for name, p in model.named_parameters()
        if not (config.freeze_encoder and name.startswith("image_encoder."))
    ]
    for name, p in model.named_parameters():
        p.requires_grad_(not (config.freeze_encoder and name.startswith("image_encoder.")))
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
        start = int(state["step"])
    # One generator per step keeps a resumed run identical to an uninterrupted one.
    history = []
    autocast = model.device.type == "cuda"
    for step in range(start, config.steps):
        if should_stop is not None and should_stop():
            break
        rng = np.random.default_rng([config.seed, step])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, stats = training_step(model, source, rng, config)
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
        scheduler.step()
        stats["step"] = step + 1
        stats["lr"] = scheduler.get_last_lr()[0]
        history.append(stats)
        if progress is not None:
            progress(step + 1, config.steps, stats)
        every = config.checkpoint_every
        if config.checkpoint_path and every and (step + 1) % every == 0:
            save_checkpoint(config.checkpoint_path, model, optimizer, scheduler, step + 1, config)
    if config.checkpoint_path:
        save_checkpoint(
            config.checkpoint_path, model, optimizer, scheduler, start + len(history), config
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return history
