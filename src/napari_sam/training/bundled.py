"""Train the bundled `tiny_cells` model from scratch on synthetic microscopy.

    python -m napari_sam.training.bundled --steps 3000 --out tiny_cells.pt

Deterministic for a given seed and step count (one random generator per step); the
checkpoint next to the output makes an interrupted run resumable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..model import SamConfig, build_sam
from .data import LabelledImage
from .finetuning import save_finetuned
from .loop import TrainingConfig, train
from .synthetic import generate

TINY_CELLS = SamConfig(
    img_size=256,
    patch_size=8,
    encoder_embed_dim=128,
    encoder_depth=6,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(2, 5),
    window_size=8,
    prompt_embed_dim=128,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)


def synthetic_source(rng: np.random.Generator) -> LabelledImage:
    sample = generate(rng, (256, 256))
    return LabelledImage(sample.image, [sample.cells, sample.nuclei, sample.nucleoli])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("tiny_cells.pt"))
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = build_sam(TINY_CELLS).to(args.device)
    config = TrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        objects_per_image=8,
        correction_rounds=1,
        box_fraction=0.3,
        learning_rate=args.lr,
        warmup_steps=min(100, args.steps // 10 + 1),
        scale_range=(0.7, 1.0),
        seed=args.seed,
        checkpoint_every=50,
        checkpoint_path=str(args.out.with_suffix(".run.pt")),
    )
    start = time.perf_counter()

    def report(step: int, total: int, stats: dict) -> None:
        if step % 10 == 0 or step == total:
            print(
                f"step {step}/{total} loss {stats['loss']:.3f} iou {stats['iou']:.3f} "
                f"lr {stats['lr']:.2e} {time.perf_counter() - start:.0f} s",
                flush=True,
            )

    train(model, synthetic_source, config, progress=report)
    # The format load_model reads back with its config (about 9 MB in float32).
    save_finetuned(model.cpu(), args.out, metadata={"trained": "synthetic", "steps": args.steps})
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
