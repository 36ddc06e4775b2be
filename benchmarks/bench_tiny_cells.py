"""Quality and speed of the bundled `tiny_cells` model on held-out generated images.

    python benchmarks/bench_tiny_cells.py [--model tiny_cells] [--images 200]

- single-click mean IoU: a click at a random pixel of a random cell, the candidate of
  highest predicted IoU scored against the best-matching true reading of that pixel
  (cell, or the nucleus / nucleolus it lies in); goal >= 0.85;
- whole / part / subpart: a click at a random pixel of a random nucleolus, the three
  candidates ordered by area as the widget shows them, scored against cell / nucleus /
  nucleolus; goal >= 0.7 each;
- the encoder's time per 2D image (1024 x 1024 input) on this CPU; goal <= 0.5 s.

Held-out images come from seeds the training never draws (training seeds are
(seed, step, index) triples, these are single integers from 10**9).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_sam import SamPredictor, load_model
from napari_sam.interactive import rank_candidates
from napari_sam.training.data import LabelledImage
from napari_sam.training.evaluate import single_click_iou
from napari_sam.training.synthetic import generate

HELD_OUT_SEED = 10**9


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def held_out(count: int, shape: tuple[int, int]):
    return [generate(np.random.default_rng(HELD_OUT_SEED + i), shape) for i in range(count)]


def hierarchy_scores(model, samples, clicks_per_image: int = 3) -> np.ndarray:
    """(clicks, 3) IoUs of whole / part / subpart against cell / nucleus / nucleolus."""
    rng = np.random.default_rng(0)
    predictor = SamPredictor(model)
    rows = []
    for sample in samples:
        ids = np.array(sorted(sample.nucleolus_cell))
        if len(ids) == 0:
            continue
        predictor.set_image(sample.image)
        for nucleolus in rng.choice(ids, size=min(clicks_per_image, len(ids)), replace=False):
            pixels = np.argwhere(sample.nucleoli == nucleolus)
            row, col = pixels[rng.integers(len(pixels))]
            truths = sample.levels_at(row, col)
            candidates = rank_candidates(*predictor.predict(points=[[row, col]], multimask=True))
            rows.append([iou(c.mask, t) for c, t in zip(candidates, truths, strict=True)])
    return np.array(rows)


def encoder_seconds(model, repeats: int = 5) -> float:
    predictor = SamPredictor(model)
    image = generate(np.random.default_rng(HELD_OUT_SEED - 1), (1024, 1024)).image
    predictor.set_image(image)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_cells", help="zoo name or checkpoint path")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in ((256, 256), (512, 384)):
        samples = held_out(args.images, shape)
        items = [LabelledImage(s.image, [s.cells, s.nuclei, s.nucleoli]) for s in samples]
        click = single_click_iou(model, items, clicks_per_image=5)
        levels = hierarchy_scores(model, samples)
        whole, part, subpart = levels.mean(axis=0)
        print(
            f"{args.images} images {shape[0]}x{shape[1]}: single-click mIoU {click:.3f} "
            f"(goal >= 0.85); nucleolus clicks ({len(levels)}): whole/cell {whole:.3f}, "
            f"part/nucleus {part:.3f}, subpart/nucleolus {subpart:.3f} (goal >= 0.7 each)"
        )
    print(f"encoder: {encoder_seconds(model):.3f} s per 1024x1024 image (goal <= 0.5 s)")


if __name__ == "__main__":
    main()
