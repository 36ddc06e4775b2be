"""Stand-ins with known answers for tests that need a SAM: a sample image, and the tiny
model (real encoder) with a decoder that draws discs around the prompts."""

from __future__ import annotations

import numpy as np
from skimage import data


def coins() -> np.ndarray:
    return data.coins()



RADII = (48.0, 24.0, 10.0)  # in the model's input pixels: whole, part, subpart
IOUS = (0.7, 0.9, 0.8)  # "part" has the highest predicted IoU


def disc_decode(self, features, points=None, boxes=None, mask_input=None, multimask=True):
    """A stand-in for SAM's decoder with a known answer: discs of three radii around the
    positive points (negatives cut holes of half the radius), clipped to the box. It keeps
    the real encoder, predictor and coordinate handling, so tests can check *where* a mask
    lands (scaled layers, slices) and that whole > part > subpart."""
    import torch

    grid = features.shape[-1] * 4
    step = self.img_size / grid
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * step
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    batch = points[0].shape[0] if points is not None else boxes.shape[0]
    radii = RADII if multimask else RADII[1:2]
    out = torch.full((batch, len(radii), grid, grid), -10.0)
    for b in range(batch):
        for m, radius in enumerate(radii):
            logits = torch.full((grid, grid), -10.0 if points is not None else 10.0)
            if points is not None:
                for (x, y), label in zip(points[0][b], points[1][b], strict=True):
                    dist = torch.sqrt((xx - x) ** 2 + (yy - y) ** 2)
                    if label == 1:
                        logits = torch.maximum(logits, radius - dist)
                    else:
                        logits = torch.minimum(logits, dist - radius / 2)
            if boxes is not None:
                x0, y0, x1, y1 = boxes[b].tolist()
                inside = torch.minimum(
                    torch.minimum(xx - x0, x1 - xx), torch.minimum(yy - y0, y1 - yy)
                )
                logits = torch.minimum(logits, inside)
            out[b, m] = logits
    iou = torch.tensor(IOUS if multimask else IOUS[1:2]).expand(batch, -1)
    return out, iou


def disc_model(seed: int = 1):
    """The tiny model (real encoder) with the disc decoder above."""
    import types

    import torch

    from napari_sam.model import build_sam
    from tests.reference import TINY, randomize_

    torch.manual_seed(0)
    model = randomize_(build_sam(TINY).eval(), seed=seed)
    model.decode = types.MethodType(disc_decode, model)

    def decode_iou_first(self, features, points, boxes, mask_input, multimask, min_iou):
        low, iou = disc_decode(self, features, points, boxes, mask_input, multimask)
        rows = torch.nonzero((iou > min_iou).any(dim=1))[:, 0]
        return iou, rows, low[rows]

    model.decode_iou_first = types.MethodType(decode_iou_first, model)
    return model
