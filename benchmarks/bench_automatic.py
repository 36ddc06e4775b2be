"""Segment everything on a 1024 x 1024 image with vit_b weights (random, identical in
both): ours against Meta's `SamAutomaticMaskGenerator` in the same process, interleaved.

Reported per setting: the time after the image embedding (the encoder's output is
reused by both sides), the encoder time, the total, the ratio, and how many masks each
side returned and how many of them match one-to-one at mask IoU >= 0.95.

Settings: Meta's default thresholds (with random weights few or no masks pass them);
relaxed thresholds (no predicted-IoU or stability filter) where every candidate reaches
NMS, the case where the work after decoding matters most; and partial, the middle case:
the predicted-IoU threshold set at the 85th percentile of this model's predictions on
the grid (so about 15 % of the candidates pass it), no stability filter.

    python benchmarks/bench_automatic.py [--points-per-side 32] \
        [--settings default relaxed partial]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import test_image, twin_models
from napari_sam import AutomaticMaskGenerator, SamPredictor
from napari_sam.model import CONFIGS

SETTINGS = {
    "default": {},
    "relaxed": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    "partial": {"stability_score_thresh": 0.0},  # IoU threshold: see iou_quantile
}
PARTIAL_KEEP = 0.15


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


def matched(ours: list, theirs: list) -> tuple[int, int]:
    """(ours with a partner, theirs with a partner) at mask IoU >= 0.95."""
    if not ours or not theirs:
        return 0, 0
    a = torch.tensor(np.array([r.mask for r in ours]).reshape(len(ours), -1), dtype=torch.float32)
    b = torch.tensor(
        np.array([r["segmentation"] for r in theirs]).reshape(len(theirs), -1),
        dtype=torch.float32,
    )
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)  # two empty masks agree
    good = iou >= 0.95
    return int(good.any(1).sum()), int(good.any(0).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    import segment_anything

    ours, theirs = twin_models(CONFIGS["vit_b"], seed=0)
    image = test_image()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image {image.shape}")

    # Encoders, once each (interleaved with nothing: they are the same network).
    start = time.perf_counter()
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    ours_encode = time.perf_counter() - start
    embedding = predictor.image_embedding
    reference = segment_anything.SamPredictor(theirs)
    start = time.perf_counter()
    reference.set_image(image)
    theirs_encode = time.perf_counter() - start
    saved = {
        name: getattr(reference, name)
        for name in ("features", "original_size", "input_size", "is_image_set")
    }

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

        start = time.perf_counter()
        ours_records = generator.generate(image, embedding=embedding)
        ours_after = time.perf_counter() - start
        start = time.perf_counter()
        theirs_records = meta.generate(image)
        theirs_after = time.perf_counter() - start

        ours_ok, theirs_ok = matched(ours_records, theirs_records)
        print(
            f"[{name}] {params}\n"
            f"  after the embedding: ours {ours_after:.1f} s, Meta's {theirs_after:.1f} s, "
            f"x{theirs_after / ours_after:.2f} (goal >= 3)\n"
            f"  with the encoder:    ours {ours_after + ours_encode:.1f} s, "
            f"Meta's {theirs_after + theirs_encode:.1f} s, "
            f"x{(theirs_after + theirs_encode) / (ours_after + ours_encode):.2f} "
            f"(encoder: ours {ours_encode:.1f} s, Meta's {theirs_encode:.1f} s)\n"
            f"  masks: ours {len(ours_records)}, Meta's {len(theirs_records)}; matched at "
            f"IoU >= 0.95: ours {ours_ok}/{len(ours_records)}, "
            f"Meta's {theirs_ok}/{len(theirs_records)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
