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


def ellipsoid_stack(shape=(40, 128, 128), radii=(15, 36, 28), noise=25.0, seed=0):
    """A bright ellipsoid in a noisy uint8 stack, and its (Z, Y, X) bool truth."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = [n / 2 for n in shape]
    inside = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii, strict=True)) <= 1
    image = np.where(inside, 170.0, 60.0) + rng.normal(0, noise, shape)
    return np.clip(image, 0, 255).astype(np.uint8), inside


def moving_disc_movie(frames=24, size=128, radius=18, step=(2, 3), noise=20.0, seed=0):
    """A disc moving `step` (rows, cols) pixels per frame: uint8 (T, Y, X) and its truth."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:size, :size]
    truth = np.zeros((frames, size, size), bool)
    for t in range(frames):
        centre = (30 + step[0] * t, 30 + step[1] * t)
        truth[t] = (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2
    image = np.where(truth, 180.0, 50.0) + rng.normal(0, noise, truth.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def touching_spheres(shape=(24, 128, 128), radius=20, noise=15.0, seed=0):
    """Two bright spheres touching along the column axis, a dark seam between them:
    uint8 (Z, Y, X) and the (Z, Y, X) truth with ids 1 and 2."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre_z, centre_y = shape[0] / 2, shape[1] / 2
    truth = np.zeros(shape, np.int32)
    for label, centre_x in ((1, shape[2] / 2 - radius), (2, shape[2] / 2 + radius)):
        inside = (z - centre_z) ** 2 + (y - centre_y) ** 2 + (x - centre_x) ** 2 <= radius**2
        truth[inside & (truth == 0)] = label
    image = np.where(truth > 0, 170.0, 50.0) + rng.normal(0, noise, shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def head_model(seed: int = 0):
    """`disc_model` carrying an instance segmentation head of PyTorch's default random
    initialisation (seeded): its maps vary over the image, so its labels change with
    the thresholds (seed 0 on `coins()`: 29 objects at foreground > 0.5, 3 at > 0.7)."""
    import torch

    from napari_sam.model.instance_decoder import InstanceDecoder

    model = disc_model()
    torch.manual_seed(seed)
    model.attach_instance_decoder(InstanceDecoder(model.prompt_encoder.embed_dim, 8).eval())
    return model


def count_encodings(monkeypatch, module) -> list:
    """Record the (rows, cols) of every image `module.embed_image` embeds from now on
    (the list fills as it is called); `module` is where the code under test looks it up."""
    encoded = []
    original = module.embed_image

    def counting(model, pixels, *args):
        encoded.append(pixels.shape[:2])
        return original(model, pixels, *args)

    monkeypatch.setattr(module, "embed_image", counting)
    return encoded
