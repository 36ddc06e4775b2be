"""Automatic instance segmentation (AIS, the model's dense head) against the 32 x 32 grid
of point prompts (AMG), same image, same model, same process, interleaved.

Speed (CPU): the time after the image embedding (the encoder's output is reused by
both), and per image with the embedding. Quality, on held-out generated images (seeds
never drawn in training) of blobs (`napari_sam.training.synthetic.blob_source`: touching
cells drawn solid, or nuclei alone; fluorescence, brightfield and phase styles): F1 at
IoU 0.5 and mean segmentation accuracy (`training.evaluate.instance_scores`) of AIS at
its defaults, of the grid at the microscopy defaults and with its filters off, and of a
classical Otsu threshold plus distance-transform watershed (scikit-image).

    python benchmarks/bench_instances.py [--model tiny_cells] [--images 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from scipy import ndimage

from common import interleaved
from napari_sam import load_model
from napari_sam.automatic import (
    MICROSCOPY_DEFAULTS,
    AutomaticMaskGenerator,
    NoObjectsWarning,
    masks_to_labels,
    predict_instance_maps,
)
from napari_sam.predictor import embed_image
from napari_sam.training.evaluate import instance_scores
from napari_sam.training.synthetic import blob_source

HELD_OUT_SEED = 1_000_003  # training draws from seeds 0, 1, ...: never this one


def classical(image: np.ndarray) -> np.ndarray:
    """Otsu threshold (the minority side is foreground, so dark objects on a bright
    background count too), then a seeded watershed on the distance transform."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), 1.0)
    foreground = smooth > threshold_otsu(smooth)
    if foreground.mean() > 0.5:
        foreground = ~foreground
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(distance, min_distance=4, labels=ndimage.label(foreground)[0])
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def grid_labels(model, image, embedding, **params) -> np.ndarray:
    generator = AutomaticMaskGenerator(model, **{**MICROSCOPY_DEFAULTS, **params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoObjectsWarning)
        return masks_to_labels(generator.generate(image, embedding=embedding), image.shape)


def speed(model, image: np.ndarray, repeats: int) -> None:
    embedding = embed_image(model, image)
    results = interleaved(
        {
            "ais": lambda: predict_instance_maps(model, image, embedding=embedding).labels(),
            "amg": lambda: grid_labels(model, image, embedding, points_per_side=32),
            "amg, filters off": lambda: grid_labels(
                model, image, embedding, points_per_side=32, pred_iou_thresh=0.0,
                stability_score_thresh=0.0),
            "embedding": lambda: embed_image(model, image),
        },
        repeats,
    )  # fmt: skip
    ais, encoder = results["ais"][0], results["embedding"][0]
    print(f"image {image.shape}, {repeats} interleaved rounds, median seconds:")
    for name in ("ais", "amg", "amg, filters off"):
        seconds, labels = results[name]
        print(f"  {name:17s} after the embedding {seconds:7.3f} s   with it "
              f"{seconds + encoder:7.3f} s   {int(labels.max())} objects")  # fmt: skip
    print(f"  embedding {encoder:.3f} s")
    for name in ("amg", "amg, filters off"):
        after, total = results[name][0] / ais, (results[name][0] + encoder) / (ais + encoder)
        print(f"  {name} / ais: {after:.1f}x after the embedding, {total:.1f}x per image")


def quality(model, count: int) -> None:
    rng = np.random.default_rng(HELD_OUT_SEED)
    methods = {
        "ais": lambda image, e: predict_instance_maps(model, image, embedding=e).labels(),
        "amg (microscopy defaults)": lambda image, e: grid_labels(model, image, e),
        "amg (filters off)": lambda image, e: grid_labels(
            model, image, e, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        "otsu + distance watershed": lambda image, e: classical(image),
    }  # fmt: skip
    scores = {name: [] for name in methods}
    for _ in range(count):
        item = blob_source(rng)
        embedding = embed_image(model, item.image)
        for name, method in methods.items():
            scores[name].append(instance_scores(method(item.image, embedding), item.levels[0]))
    print(f"held-out generated images: {count} (seed {HELD_OUT_SEED}), mean over images")
    for name, values in scores.items():
        f1 = np.mean([v["f1"] for v in values])
        msa = np.mean([v["msa"] for v in values])
        print(f"  {name:27s} F1@0.5 {f1:.3f}   mSA {msa:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny_cells")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu", dtype="float32", progress=False)
    if model.instance_decoder is None:
        raise SystemExit(f"{args.model} has no instance segmentation head.")
    image = blob_source(np.random.default_rng(HELD_OUT_SEED + 1), (512, 512)).image
    speed(model, image, args.repeats)
    quality(model, args.images)


if __name__ == "__main__":
    main()
