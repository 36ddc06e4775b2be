"""Segment everything: ours against Meta's `SamAutomaticMaskGenerator`, the same weights
in both, in the same process, interleaved.

Models (--model):
- tiny_cells (default): the bundled trained model on scikit-image's immunohistochemistry
  image (512 x 512 RGB, nuclei in tissue). Its masks depend on the point: with the
  filters off a 32 x 32 grid leaves 2,747 masks (of 3,072 candidates) after box NMS,
  so the work after decoding and the match counts mean something.
- vit_b: seeded random vit_b weights on a 1024 x 1024 photo. Random weights give
  image-wide blobs: few masks survive, most of them alike; a timing of the pipeline.

Settings (--settings): unfiltered (no predicted-IoU or stability filter, box NMS 0.7:
every candidate reaches NMS); partial (the predicted-IoU threshold at the 85th
percentile of this model's predictions on the grid, no stability filter); default
(Meta's thresholds 0.88 / 0.95; with these models almost nothing passes them).

Timing: each side encodes the image once, untimed; both generators then reuse that
embedding, so the time is the work after the encoder. One untimed warm-up call per
side, then --repeats rounds, the side going first alternating; medians are reported.
--threads sets torch's thread count: ours runs many small tensor operations, which
suffer more than Meta's large ones when threads compete for busy cores.

Matching: a mask with a partner on the other side at mask IoU >= 0.95, both ways,
among non-empty masks only (two empty masks would "match" whatever their points);
empty masks are counted apart.

    python benchmarks/bench_automatic.py [--model tiny_cells] [--points-per-side 32] \
        [--settings unfiltered partial default] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import sparse

from common import interleaved, test_image, twin_models
from napari_sam import AutomaticMaskGenerator, SamPredictor, load_model
from napari_sam.model import CONFIGS
from reference import meta_twin

SETTINGS = {
    "unfiltered": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    "partial": {"stability_score_thresh": 0.0},  # IoU threshold: see iou_quantile
    "default": {},
}
PARTIAL_KEEP = 0.15


def models_and_image(name: str):
    """(ours, Meta's, RGB uint8 image) for --model."""
    if name == "tiny_cells":
        from skimage import data

        ours = load_model("tiny_cells", device="cpu", dtype="float32", progress=False)
        return ours, meta_twin(ours), data.immunohistochemistry()  # (512, 512, 3)
    ours, theirs = twin_models(CONFIGS["vit_b"], seed=0)
    return ours, theirs, test_image()


def iou_quantile(model, embedding, points_per_side: int, keep: float) -> float:
    """The predicted-IoU value that `keep` of the grid's candidate masks exceed."""
    height, width = embedding.input_size
    offsets = (np.arange(points_per_side) + 0.5) / points_per_side
    xy = np.stack(np.meshgrid(offsets * width, offsets * height), -1).reshape(-1, 1, 2)
    ious = []
    with torch.inference_mode():
        for batch in np.array_split(xy, max(1, len(xy) // 64)):
            points = torch.from_numpy(batch).float()
            labels = torch.ones(len(points), 1, dtype=torch.long)
            _, iou = model.decode(embedding.features, (points, labels), None, None, True)
            ious.append(iou)
    return float(torch.quantile(torch.cat(ious).flatten(), 1 - keep))


def pixel_matrix(pixels: list[np.ndarray], size: int) -> sparse.csr_matrix:
    """(masks, size) 0/1 sparse matrix of masks given as flat pixel indices."""
    rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(pixels)])
    ones = np.ones(len(rows), np.float64)
    return sparse.csr_matrix((ones, (rows, np.concatenate(pixels))), shape=(len(pixels), size))


def matched(ours: list, theirs: list, shape) -> tuple[int, int, int, int]:
    """(ours non-empty with a partner, ours non-empty, Meta's non-empty with a partner,
    Meta's non-empty) at mask IoU >= 0.95; exact pixel counts through sparse products
    (a dense 2,500 x 2,500 x 262,144 product would take minutes)."""
    width = shape[1]
    a = []
    for r in ours:
        if r.area > 0:
            rows, cols = np.nonzero(r.bbox_mask)
            a.append((rows + r.bbox[0]) * width + cols + r.bbox[1])
    b = [np.flatnonzero(r["segmentation"]) for r in theirs if r["area"] > 0]
    if not a or not b:
        return 0, len(a), 0, len(b)
    pa, pb = pixel_matrix(a, shape[0] * width), pixel_matrix(b, shape[0] * width)
    inter = (pa @ pb.T).tocoo()
    area_a, area_b = np.asarray(pa.sum(1)).ravel(), np.asarray(pb.sum(1)).ravel()
    iou = inter.data / (area_a[inter.row] + area_b[inter.col] - inter.data)
    good = iou >= 0.95
    return len(np.unique(inter.row[good])), len(a), len(np.unique(inter.col[good])), len(b)


def encode(ours, theirs, image):
    """Each side's embedding of the image (timed once each, not part of the ratio)."""
    import segment_anything

    start = time.perf_counter()
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    ours_seconds = time.perf_counter() - start
    reference = segment_anything.SamPredictor(theirs)
    start = time.perf_counter()
    reference.set_image(image)
    theirs_seconds = time.perf_counter() - start
    saved = {
        name: getattr(reference, name)
        for name in ("features", "original_size", "input_size", "is_image_set")
    }
    return predictor.image_embedding, saved, ours_seconds, theirs_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny_cells", choices=["tiny_cells", "vit_b"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    import segment_anything

    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs, image = models_and_image(args.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}, "
        f"image {image.shape}, {args.points_per_side} x {args.points_per_side} points, "
        f"{args.repeats} timed rounds after a warm-up"
    )
    embedding, saved, ours_encode, theirs_encode = encode(ours, theirs, image)
    print(f"encoder (once, untimed below): ours {ours_encode:.2f} s, Meta's {theirs_encode:.2f} s")

    for name in args.settings:
        params = dict(points_per_side=args.points_per_side, **SETTINGS[name])
        if name == "partial":
            threshold = iou_quantile(ours, embedding, args.points_per_side, PARTIAL_KEEP)
            params["pred_iou_thresh"] = round(threshold, 4)
        generator = AutomaticMaskGenerator(ours, **params)
        meta = segment_anything.SamAutomaticMaskGenerator(theirs, **params)

        def reuse_embedding(_image, meta=meta) -> None:  # Meta's generator re-encodes
            for key, value in saved.items():
                setattr(meta.predictor, key, value)

        meta.predictor.set_image = reuse_embedding
        results = interleaved(
            {
                "ours": lambda generator=generator: generator.generate(image, embedding=embedding),
                "meta": lambda meta=meta: meta.generate(image),
            },
            args.repeats,
        )
        (ours_time, ours_records), (theirs_time, theirs_records) = results["ours"], results["meta"]
        ours_ok, ours_full, theirs_ok, theirs_full = matched(
            ours_records, theirs_records, image.shape[:2]
        )
        ours_empty, theirs_empty = len(ours_records) - ours_full, len(theirs_records) - theirs_full
        print(
            f"[{name}] {params}\n"
            f"  masks: ours {len(ours_records)}, Meta's {len(theirs_records)} "
            f"(empty: ours {ours_empty}, Meta's {theirs_empty})\n"
            f"  non-empty matched at mask IoU >= 0.95: ours {ours_ok}/{ours_full}, "
            f"Meta's {theirs_ok}/{theirs_full}\n"
            f"  after the embedding, median of {args.repeats}: ours {ours_time:.2f} s, "
            f"Meta's {theirs_time:.2f} s, Meta/ours x{theirs_time / ours_time:.2f}"
            + ("" if theirs_full else " (no mask survives: a ratio of decoding and filtering)"),
            flush=True,
        )


if __name__ == "__main__":
    main()
