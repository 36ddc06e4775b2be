"""Train the bundled `tiny_cells` model from scratch on synthetic microscopy.

    python -m napari_sam.training.bundled --steps 3000 --out tiny_cells.pt
    python -m napari_sam.training.bundled --minutes 8 --init tiny_cells.pt --out next.pt

The batches depend only on (seed, step), also when drawn by worker processes, and the
checkpoint next to the output makes an interrupted run resumable. `--snapshot-every N`
also writes the model alone (the shippable file) every N steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ..model import TINY_CELLS, build_sam
from ..zoo.checkpoint import read_checkpoint
from .finetuning import save_finetuned
from .loop import TrainingConfig, train
from .synthetic import multiscale_source


def training_config(
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    workers: int,
    run_checkpoint: Path,
    objects_per_image: int = 16,
    correction_rounds: int = 2,
    dense_weight: float = 1.0,
    train_only: tuple[str, ...] = (),
    iou_target: str = "target",
) -> TrainingConfig:
    """The recipe of the shipped weights. With `train_only` prefixes that leave the image
    encoder out, the encoder is frozen (no dense loss: it trains the encoder)."""
    encoder_trains = not train_only or any(p.startswith("image_encoder") for p in train_only)
    return TrainingConfig(
        steps=steps,
        batch_size=batch_size,
        objects_per_image=objects_per_image,
        correction_rounds=correction_rounds,
        box_fraction=0.3,
        learning_rate=lr,
        weight_decay=0.05,
        warmup_steps=min(200, steps // 10 + 1),
        # Crops of 0.6-2x the input side: objects at 0.5-1.7x their generated size
        # (weights trained on 256 px crops alone failed at half scale, on 512 px images).
        scale_range=(0.6, 2.0),
        seed=seed,
        checkpoint_every=200,
        checkpoint_path=str(run_checkpoint),
        workers=workers,
        dense_weight=dense_weight if encoder_trains else 0.0,
        freeze_encoder=not encoder_trains,
        train_only=tuple(train_only),
        iou_target=iou_target,
    )


class TimeBudget:
    """Fits a run's step count to a wall-clock budget (a GPU lent for minutes). The pace
    is measured from step `settle` on (worker processes warm up before), the step count
    re-estimated every `every` steps; the cosine schedule reads `config.steps`, so it
    still ends at zero when the time is up."""

    def __init__(self, config: TrainingConfig, seconds: float, settle: int = 20, every: int = 50):
        self.config, self.seconds, self.settle, self.every = config, seconds, settle, every
        self.start = time.perf_counter()
        self.mark: tuple[int, float] | None = None
        self.step = 0

    def update(self, step: int) -> None:
        now = time.perf_counter()
        self.step = step
        if step == self.settle:
            self.mark = (step, now)
        elif self.mark and step % self.every == 0:
            pace = (now - self.mark[1]) / (step - self.mark[0])
            left = self.seconds - (now - self.start)
            self.config.steps = step + max(1, int(left / pace))

    def spent(self) -> bool:
        over = time.perf_counter() - self.start > self.seconds
        return over or self.step >= self.config.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    # On an H200 a step of 8 images took 0.22 s, launch-bound, while 14 workers drew 8
    # images in 0.08 s: 16 images use the GPU better. At 1e-3 the first run predicted
    # nothing for 1100 steps and only learned once the cosine had brought the rate
    # below about 5e-4.
    parser.add_argument("--batch-size", type=int, default=16, help="images per step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(0, (os.cpu_count() or 1) - 2))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("tiny_cells.pt"))
    parser.add_argument("--snapshot-every", type=int, default=0)
    parser.add_argument(
        "--init", type=Path, help="start from these weights (a saved model) instead of random"
    )
    parser.add_argument("--objects-per-image", type=int, default=16)
    parser.add_argument("--correction-rounds", type=int, default=2)
    parser.add_argument(
        "--dense-weight",
        type=float,
        default=1.0,
        help="weight of the encoder's dense auxiliary loss (0: SAM's loss alone)",
    )
    parser.add_argument(
        "--train-only",
        nargs="+",
        default=(),
        metavar="PREFIX",
        help="train only parameters whose names start so, e.g. "
        "mask_decoder.iou_prediction_head. (calibrates the predicted IoUs, masks unchanged)",
    )
    parser.add_argument(
        "--iou-target",
        choices=("target", "readings"),
        default="target",
        help="train predicted IoUs towards the prompted object's IoU (the paper's) or the "
        "best-matching object of any level under the click",
    )
    parser.add_argument(
        "--run-checkpoint", type=Path, help="resumable state (default: next to --out)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="train for this long instead of --steps (the step count is fitted as it goes)",
    )
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = build_sam(TINY_CELLS)
    if args.init:
        state, _ = read_checkpoint(args.init)
        model.load_state_dict(state)
    model = model.to(args.device)
    config = training_config(
        args.steps,
        args.batch_size,
        args.lr,
        args.seed,
        args.workers,
        args.run_checkpoint or args.out.with_suffix(".run.pt"),
        args.objects_per_image,
        args.correction_rounds,
        args.dense_weight,
        tuple(args.train_only),
        args.iou_target,
    )
    budget = None
    if args.minutes:
        config.steps = 10**7  # until the first estimate
        budget = TimeBudget(config, args.minutes * 60)
    start = time.perf_counter()
    metadata = {
        "trained": "synthetic",
        "seed": args.seed,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "init": args.init.name if args.init else None,
        "dense_weight": config.dense_weight,
        "train_only": list(config.train_only),
        "iou_target": config.iou_target,
    }

    def report(step: int, total: int, stats: dict) -> None:
        if budget is not None:
            budget.update(step)
            total = config.steps
        if step % 25 == 0 or step == total:
            print(
                f"step {step}/{total} loss {stats['loss']:.3f} iou {stats['iou']:.3f} "
                f"dense {stats.get('dense', 0):.3f} "
                f"lr {stats['lr']:.2e} {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        if args.snapshot_every and step % args.snapshot_every == 0 and step < total:
            save_finetuned(model, args.out, metadata={**metadata, "steps": step})

    history = train(
        model, multiscale_source, config, progress=report, should_stop=budget and budget.spent
    )
    steps = history[-1]["step"] if history else config.steps
    # The format load_model reads back with its config (about 9 MB in float32).
    model = model.cpu().float()
    save_finetuned(model, args.out, metadata={**metadata, "steps": steps})
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
