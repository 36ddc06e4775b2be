"""Training an instance segmentation head (`InstanceDecoder`) on a frozen SAM encoder.

    python -m napari_sam.training.instance_head --minutes 50 --out head.pt
    python -m napari_sam.training.instance_head --minutes 30 --init head.pt --out head2.pt
    python -m napari_sam.training.instance_head --pack src/napari_sam/models/tiny_cells.pt \
        --init head2.pt --out tiny_cells.pt       # the model file with the head inside

The encoder stays frozen, so every image is embedded once (no gradient through the ViT)
and training fits a 2-core CPU. By default the head also reads the image at its output
resolution (`InstanceDecoder(image_channels=3)`): a frozen embedding of coarse tokens
does not carry boundaries (a head reading it alone reached F1 0.04 on held-out blob
images after 77 CPU minutes); `--no-image-path` trains micro-sam's layout. Targets are
micro-sam's (Archit et al. 2025): foreground,
and per object the distance to its centre and to its boundary, each normalised to
[0, 1] within the object (boundary distance inverted: 0 innermost); 1 in the
background. Loss: binary cross-entropy + Dice on the foreground, squared error on the
distances (weighted up inside objects, where the watershed reads them).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..model.instance_decoder import InstanceDecoder, instance_decoder_from_state
from ..predictor import embed_image, head_image
from .synthetic import blob_source

__all__ = ["instance_targets", "train_head"]


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """(H, W) instance labels -> (3, H, W) float32 targets: foreground, centre distance,
    inverted boundary distance (see module docstring). The centre of an object is its
    innermost pixel (largest distance to the boundary), which lies inside any shape."""
    labels = np.asarray(labels)
    targets = np.ones((3, *labels.shape), np.float32)
    targets[0] = labels > 0
    # Distance to the nearest pixel of another label (background included).
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        where = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in where)
        inside = labels[where] == index
        edt = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        rows, cols = np.nonzero(inside)
        depth = edt[rows, cols]
        centre = np.argmax(depth)
        to_centre = np.hypot(rows - rows[centre], cols - cols[centre])
        view_c, view_b = targets[1][where], targets[2][where]
        view_c[rows, cols] = to_centre / max(to_centre.max(), 1.0)
        # Rim pixels (distance 1 to the outside) get 1, as the background does.
        view_b[rows, cols] = 1.0 - (depth - 1) / max(depth.max() - 1, 1.0)
    return targets


@dataclass
class _Example:
    """One embedded image: its embedding (1, C, g, g), the image as the head reads it
    (1, 3, F, F; None for a head without an image path) and targets (3, F, F) in the
    head's output frame (F = 16 g), the padding marked invalid."""

    features: torch.Tensor
    pixels: torch.Tensor | None
    targets: torch.Tensor
    valid: torch.Tensor  # (F, F) bool: inside the resized image

    def detached(self) -> _Example:
        """A copy usable outside inference mode (for autograd)."""
        pixels = None if self.pixels is None else self.pixels.clone()
        return _Example(self.features.clone(), pixels, self.targets.clone(), self.valid.clone())


def _example(model, rng: np.random.Generator, image_path: bool) -> _Example:
    item = blob_source(rng)
    embedding = embed_image(model, item.image)
    side = 16 * model.prompt_encoder.image_embedding_size[0]
    in_h, in_w = (extent * side // model.img_size for extent in embedding.input_size)
    # Nearest-neighbour resizing keeps ids; targets are computed in the output frame.
    rows = (np.arange(in_h) * item.image.shape[0] / in_h).astype(int)
    cols = (np.arange(in_w) * item.image.shape[1] / in_w).astype(int)
    labels = np.zeros((side, side), np.int32)
    labels[:in_h, :in_w] = item.levels[0][rows][:, cols]
    valid = torch.zeros((side, side), dtype=torch.bool)
    valid[:in_h, :in_w] = True
    pixels = head_image(model, item.image, embedding.input_size) if image_path else None
    targets = torch.from_numpy(instance_targets(labels))
    return _Example(embedding.features, pixels, targets, valid)


def _loss(predicted: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """predicted, targets (B, 3, h, w); valid (B, h, w)."""
    weight = valid.float()
    total = weight.sum().clamp(min=1)
    foreground, truth = predicted[:, 0], targets[:, 0]
    bce = F.binary_cross_entropy(foreground.clamp(1e-6, 1 - 1e-6), truth, reduction="none")
    bce = (bce * weight).sum() / total
    overlap = (foreground * truth * weight).sum()
    dice = 1 - (2 * overlap + 1) / ((foreground * weight).sum() + (truth * weight).sum() + 1)
    inside = (1 + 4 * truth) * weight
    squared = ((predicted[:, 1:] - targets[:, 1:]) ** 2 * inside[:, None]).sum() / (2 * total)
    return bce + dice + 5 * squared


def _batch(pool: list[_Example], rng, batch_size: int, crop: int):
    """Random windows of `crop` x `crop` embedding tokens and the pixels and targets
    under them (16 px per token)."""
    features, pixels, targets, valid = [], [], [], []
    for index in rng.choice(len(pool), batch_size, replace=False):
        example = pool[index]
        grid = example.features.shape[-1]
        r, c = (int(rng.integers(0, grid - crop + 1)) for _ in range(2))
        features.append(example.features[..., r : r + crop, c : c + crop])
        window = (slice(r * 16, (r + crop) * 16), slice(c * 16, (c + crop) * 16))
        if example.pixels is not None:
            pixels.append(example.pixels[(slice(None), slice(None), *window)])
        targets.append(example.targets[(slice(None), *window)])
        valid.append(example.valid[window])
    pixels = torch.cat(pixels) if pixels else None
    return torch.cat(features), pixels, torch.stack(targets), torch.stack(valid)


def train_head(
    model,
    head: InstanceDecoder,
    seconds: float,
    *,
    batch_size: int = 8,
    crop: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    pool_size: int = 512,
    report=None,
) -> InstanceDecoder:
    """Train `head` on `model`'s frozen embeddings of `blob_source` images (and the
    images themselves, for a head with an image path) for about `seconds`. A pool of
    `pool_size` embedded examples is refreshed one example per step (new images keep
    coming while each is reused a few times). Each step decodes random `crop` x
    `crop`-token windows of the embeddings (a convolutional head is local: a quarter of
    the area costs a quarter of the time) and scores them in the head's output frame.
    Returns `head` (eval)."""
    rng = np.random.default_rng(seed)
    model.eval()
    image_path = bool(head.image_channels)
    crop = min(crop, model.prompt_encoder.image_embedding_size[0])
    with torch.inference_mode():
        pool = [_example(model, rng, image_path) for _ in range(min(pool_size, 64))]
    pool = [example.detached() for example in pool]
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    head.train()
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        with torch.inference_mode():
            fresh = _example(model, rng, image_path)
        if len(pool) < pool_size:
            pool.append(fresh.detached())
        else:
            pool[int(rng.integers(len(pool)))] = fresh.detached()
        fraction = (time.monotonic() - start) / seconds
        for group in optimiser.param_groups:  # cosine decay over the time budget
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(fraction, 1.0)))
        features, pixels, targets, valid = _batch(pool, rng, batch_size, crop)
        loss = _loss(head(features, pixels), targets, valid)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if report is not None and step % 25 == 0:
            report(step, time.monotonic() - start, loss.item())
    return head.eval()


def pack(head_path: str | Path, model_path: str | Path, out: str | Path) -> Path:
    """Write `model_path`'s checkpoint with the head of `head_path` as its
    `decoder_state` (micro-sam's layout) to `out`, atomically. The head must fit the
    model (checked by loading the result). Returns `out`."""
    from ..zoo import load_model
    from ..zoo.checkpoint import safe_load

    checkpoint = dict(safe_load(model_path))
    checkpoint["decoder_state"] = safe_load(head_path)["decoder_state"]
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    load_model(partial, device="cpu", progress=False)  # raises if the head does not fit
    partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny_cells", help="model whose encoder is used")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--features", type=int, default=16, help="initial features")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all)")
    parser.add_argument("--crop", type=int, default=8, help="embedding tokens per side "
                        "of each training window (the whole grid: as inference sees it)")
    parser.add_argument("--no-image-path", action="store_true", help="micro-sam's head, "
                        "reading the embedding alone (default: it reads the image too)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--init", help="head file (decoder_state) to continue from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where to write {'decoder_state': ...}")
    parser.add_argument("--pack", metavar="MODEL_FILE",
                        help="instead of training: write MODEL_FILE with the head of --init "
                        "as its decoder_state to --out")  # fmt: skip
    args = parser.parse_args(argv)
    if args.pack:
        if not args.init:
            parser.error("--pack needs --init HEAD_FILE")
        print(f"wrote {pack(args.init, args.pack, args.out)}")
        return 0

    from ..zoo import load_model

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu", dtype="float32", progress=False)
    if args.init:
        head = instance_decoder_from_state(
            torch.load(args.init, weights_only=True)["decoder_state"], args.init
        )
    else:
        channels = 0 if args.no_image_path else 3
        head = InstanceDecoder(model.prompt_encoder.embed_dim, args.features,
                               image_channels=channels)  # fmt: skip

    def report(step: int, spent: float, loss: float) -> None:
        print(f"step {step}  {spent / 60:.1f} min  loss {loss:.4f}", flush=True)

    train_head(model, head, args.minutes * 60, seed=args.seed, report=report, crop=args.crop,
               batch_size=args.batch_size, lr=args.lr)  # fmt: skip
    out = Path(args.out)
    state = {key: value.detach().cpu() for key, value in head.state_dict().items()}
    torch.save({"decoder_state": state}, out.with_name(out.name + ".partial"))
    out.with_name(out.name + ".partial").replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

