"""Propagation through a stack with the bundled model: speed against one click, embedding
throughput, and quality on generated stacks against clicking every slice by hand.

    python benchmarks/bench_propagate.py            # speed + quality
    python benchmarks/bench_propagate.py --sweep    # which prompts and stop rule work best

Speed: time per propagated slice once the embeddings exist, against one click
(`SamPredictor.predict` with one point, three full-size masks) on the same embeddings,
interleaved in the same run; goal: at most 2x. Quality: 3D IoU of one click on the middle
slice, propagated, against one click at the object's centre on every slice where it is
(the preselected candidate: what a user clicking by hand gets from the same model).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from common import interleaved, mask_iou
from napari_sam import SamPredictor, load_model
from napari_sam.volume import PropagationSettings, StopRule, embed_slices, propagate
from napari_sam.volume.propagation import propagate_objects
from stand_ins import ellipsoid_stack, moving_disc_movie, touching_spheres

ELLIPSOIDS = [(15, 20, 16), (15, 12, 10), (10, 16, 16)]  # semi-axes (z, y, x), 40 x 128 x 128


def clicked_every_slice(model, volume, truth, embeddings) -> np.ndarray:
    """One click at the object's centre on every slice where it is, preselected masks."""
    predictor, found = SamPredictor(model), np.zeros_like(truth)
    for z in np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1)):
        rows, cols = np.nonzero(truth[z])
        predictor.image_embedding = embeddings[z]
        masks, scores, _ = predictor.predict(points=[[rows.mean(), cols.mean()]])
        found[z] = masks[int(np.argmax(scores))]
    return found


def cases(model):
    for radii in ELLIPSOIDS:
        volume, truth = ellipsoid_stack(radii=radii)
        yield f"ellipsoid {radii}", volume, truth, embed_slices(model, volume)
    movie, truth = moving_disc_movie()
    yield "moving disc, 24 frames", movie, truth, embed_slices(model, movie)


def start_point(truth: np.ndarray) -> tuple[int, list[float]]:
    index = int(np.argmax(truth.reshape(len(truth), -1).sum(axis=1)))
    rows, cols = np.nonzero(truth[index])
    return index, [rows.mean(), cols.mean()]


def quality(model, settings=None) -> None:
    print("quality (3D IoU): propagated from one click | one click on every slice")
    for name, volume, truth, embeddings in cases(model):
        index, point = start_point(truth)
        obj = propagate(model, volume, index, points=[point], embeddings=embeddings,
                        settings=settings)  # fmt: skip
        by_hand = clicked_every_slice(model, volume, truth, embeddings)
        present = np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1))
        print(f"  {name:28s} {mask_iou(obj.mask, truth):.3f} | {mask_iou(by_hand, truth):.3f}"
              f"   slices {obj.slices[0]}-{obj.slices[-1]} (truth {present[0]}-{present[-1]}),"
              f" ends: {obj.ends}")  # fmt: skip
    volume, truth = touching_spheres()
    embeddings = embed_slices(model, volume)
    index = len(volume) // 2
    points = [start_point(truth == label)[1] for label in (1, 2)]
    objects = propagate_objects(model, volume, index, points=points, embeddings=embeddings,
                                settings=settings)  # fmt: skip
    for label, obj in zip((1, 2), objects, strict=True):
        other = truth == 3 - label
        print(f"  touching sphere {label}: IoU {mask_iou(obj.mask, truth == label):.3f}, "
              f"covers {np.logical_and(obj.mask, other).sum() / other.sum():.1%} of the other")


def speed(model, repeats: int) -> None:
    volume, truth = ellipsoid_stack(shape=(40, 512, 512), radii=(15, 48, 40))
    start = time.perf_counter()
    embeddings = embed_slices(model, volume)
    seconds = time.perf_counter() - start
    print(f"embeddings: {len(volume) / seconds:.1f} slices/s ({model.device}, "
          f"{volume.shape[1]} x {volume.shape[2]}, {torch.get_num_threads()} threads)")
    index, point = start_point(truth)
    predictor = SamPredictor(model)
    predictor.image_embedding = embeddings[index]
    results = interleaved({
        "propagation": lambda: propagate(model, volume, index, points=[point],
                                         embeddings=embeddings),
        "click": lambda: predictor.predict(points=[point]),
    }, repeats)  # fmt: skip
    (whole, obj), (click, _) = results["propagation"], results["click"]
    per_slice = whole / len(obj.slices)
    print(f"propagated slice: {per_slice * 1e3:.1f} ms, one click: {click * 1e3:.1f} ms, "
          f"ratio x{per_slice / click:.2f} (goal <= 2); {len(obj.slices)} slices")


def sweep(model) -> None:
    """3D IoU of each prompt choice and stop rule, averaged over the generated cases."""
    data = list(cases(model))
    prompts = {"point": dict(use_mask=False, use_box=False, use_point=True),
               "point+box": dict(use_mask=False, use_point=True, box_margin=0.0),
               "mask+box": dict(box_margin=0.0),
               "mask+point+box": dict(use_point=True, box_margin=0.0)}  # fmt: skip
    rows = []
    for (name, kw), stability, overlap, area in itertools.product(
            prompts.items(), (0.0, 0.1, 0.2, 0.4), (0.3, 0.5, 0.7), (1.3, 1.5, 2.0)):  # fmt: skip
        stop = StopRule(min_stability=stability, min_overlap=overlap, max_area_change=area)
        settings = PropagationSettings(stop=stop, **kw)
        scores = []
        for _, volume, truth, embeddings in data:
            index, point = start_point(truth)
            obj = propagate(model, volume, index, points=[point], embeddings=embeddings,
                            settings=settings)  # fmt: skip
            scores.append(mask_iou(obj.mask, truth))
        rows.append((float(np.mean(scores)), name, stability, overlap, area, scores))
    rows.sort(key=lambda r: -r[0])
    print("mean 3D IoU | prompts | min stability | min overlap | max area change | per case")
    for mean, name, stability, overlap, area, scores in rows[:12]:
        print(f"  {mean:.3f} {name:15s} {stability:4.1f} {overlap:4.1f} {area:4.1f}  "
              + " ".join(f"{s:.2f}" for s in scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = load_model("tiny_cells")
    if args.sweep:
        sweep(model)
        return
    speed(model, args.repeats)
    quality(model)


if __name__ == "__main__":
    main()
