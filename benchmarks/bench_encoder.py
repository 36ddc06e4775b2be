"""vit_b image encoder at 1024 x 1024: ours against Meta's `segment_anything` with
identical (seeded random) weights, in the same process and in equal conditions: the
same input, one warm-up call each, then timed calls interleaved in rotating order, each
from 0..255 pixels (normalised and padded by each model's own `preprocess`) to the
embedding. Every ratio printed is against a contender measured in the same run.

- CPU: our float32 against Meta's float32. Then our bfloat16 against our float32 (one
  implementation, so the ratio is precision alone; Meta's encoder has no bfloat16 path
  of its own), with the masks of both compared.
- CUDA, where present: our bfloat16 against Meta's encoder with its weights cast to
  bfloat16, batches of 8. That baseline computes in bfloat16 throughout, as ours does;
  under autocast Meta's keeps float32 weights, casts them at every call and runs its
  softmax and LayerNorms in float32, which would mix precision into the ratio again.
  Meta's under bfloat16 autocast and both in float32 are printed for context.

    python benchmarks/bench_encoder.py [--repeats 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from common import interleaved, mask_iou, test_image, twin_models
from napari_sam import SamPredictor
from napari_sam.model import CONFIGS

BF16 = torch.bfloat16


def with_bfloat16_encoder(model):
    """A copy of `model` whose image encoder holds bfloat16 weights (the rest float32)."""
    model = copy.deepcopy(model)
    model.image_encoder.to(BF16)
    return model


def meta_encode(model, pixels: torch.Tensor) -> torch.Tensor:
    """Meta's predictor's path: preprocess in float32, then its image encoder in the
    dtype of its weights."""
    dtype = model.image_encoder.patch_embed.proj.weight.dtype
    return model.image_encoder(model.preprocess(pixels).to(dtype))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="images per call on CUDA")
    args = parser.parse_args()
    torch.manual_seed(0)
    # LayerNorm gains near 1 (see tests/reference.py): masks of varied sizes to compare
    ours, theirs = twin_models(CONFIGS["vit_b"], seed=1, all_norms=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    cpu_benchmark(ours, theirs, args.repeats)
    if torch.cuda.is_available():
        cuda_benchmark(ours, theirs, args.batch, args.repeats)


def cpu_benchmark(ours, theirs, repeats: int) -> None:
    image = test_image()
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    half = with_bfloat16_encoder(ours)
    with torch.inference_mode():
        measured = interleaved(
            {
                "ours float32": lambda: ours.encode_image(pixels),
                "Meta's float32": lambda: meta_encode(theirs, pixels),
                "ours bfloat16": lambda: half.encode_image(pixels),
            },
            repeats,
        )
    (ours_s, ours_out), (meta_s, meta_out) = measured["ours float32"], measured["Meta's float32"]
    half_s, half_out = measured["ours bfloat16"]
    print(
        f"cpu float32, 1 image, median of {repeats} interleaved: ours {ours_s:.2f} s, "
        f"Meta's {meta_s:.2f} s: ours x{meta_s / ours_s:.2f} as fast (goal >= 1.3); "
        f"embeddings differ by {relative_error(ours_out, meta_out):.1e} of their norm"
    )

    fp32, bf16 = SamPredictor(ours), SamPredictor(half)
    fp32.set_image(image)
    bf16.set_image(image)
    clicks = [(r, c) for r in range(128, 1024, 256) for c in range(128, 1024, 256)]
    ious, areas = [], []
    for click in clicks:
        a, scores, _ = fp32.predict(points=[click])
        b, _, _ = bf16.predict(points=[click])
        best = np.argmax(scores)  # the same candidate of each
        ious.append(mask_iou(a[best], b[best]))
        areas.append(a[best].mean())
    print(
        f"cpu bfloat16, ours only (same implementation: precision alone): {half_s:.2f} s "
        f"per image (goal <= 4.5 s), x{ours_s / half_s:.2f} as fast as our float32; "
        f"embeddings differ by {relative_error(half_out, ours_out):.1e}; mask IoU vs "
        f"float32 over {len(clicks)} clicks: mean {np.mean(ious):.3f}, min {np.min(ious):.3f} "
        f"(goal >= 0.98; masks cover {np.min(areas):.0%}-{np.max(areas):.0%} of the image)"
    )


def cuda_benchmark(ours, theirs, batch: int, repeats: int) -> None:
    device = torch.device("cuda")
    size = ours.img_size
    pixels = torch.rand(batch, 3, size, size, device=device) * 255
    ours_half = with_bfloat16_encoder(ours).to(device)
    meta_half = with_bfloat16_encoder(theirs).to(device)
    ours, theirs = copy.deepcopy(ours).to(device), copy.deepcopy(theirs).to(device)

    def synced(encode):
        def run():
            with torch.inference_mode():
                out = encode()
            torch.cuda.synchronize()  # the time of the work, not of queueing it
            return out

        return run

    def meta_autocast():
        with torch.autocast("cuda", dtype=BF16):
            return meta_encode(theirs, pixels)

    measured = interleaved(
        {
            "ours bfloat16": synced(lambda: ours_half.encode_image(pixels)),
            "Meta's bfloat16 weights": synced(lambda: meta_encode(meta_half, pixels)),
            "Meta's bfloat16 autocast": synced(meta_autocast),
            "ours float32": synced(lambda: ours.encode_image(pixels)),
            "Meta's float32": synced(lambda: meta_encode(theirs, pixels)),
        },
        repeats,
    )
    rate = {name: batch / seconds for name, (seconds, _) in measured.items()}
    print(f"cuda {torch.cuda.get_device_name(device)}, batch {batch}, median of {repeats}:")
    for name, images_per_s in rate.items():
        print(f"  {name}: {images_per_s:.1f} images/s")
    half, weights, autocast = (
        rate[name]
        for name in ("ours bfloat16", "Meta's bfloat16 weights", "Meta's bfloat16 autocast")
    )
    single = rate["ours float32"] / rate["Meta's float32"]
    error = relative_error(measured["ours bfloat16"][1], measured["ours float32"][1])
    print(
        f"  bfloat16: ours x{half / weights:.2f} as fast as Meta's with bfloat16 weights "
        f"(x{half / autocast:.2f} vs its autocast); float32: ours x{single:.2f}; "
        f"our bfloat16 embeddings differ from our float32 by {error:.1e}"
    )


if __name__ == "__main__":
    main()
