"""vit_b image encoder at 1024 x 1024: ours against Meta's `segment_anything` on
identical (seeded random) weights in the same process, float32; then ours in bfloat16
with its masks compared to float32; then CUDA bfloat16 throughput where a GPU exists.

    python benchmarks/bench_encoder.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import mask_iou, test_image, timed, twin_models
from napari_sam import SamPredictor
from napari_sam.model import CONFIGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    ours, theirs = twin_models(CONFIGS["vit_b"], seed=0)
    pixels = torch.from_numpy(test_image()).permute(2, 0, 1)[None].float()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with torch.inference_mode():
        ours.encode_image(pixels)  # warm-up: allocator, kernels
        theirs_input = theirs.preprocess(pixels)
        ours_times, theirs_times = [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            t, ours_features = timed(lambda: ours.encode_image(pixels), 1)
            ours_times.append(t)
            t, theirs_features = timed(lambda: theirs.image_encoder(theirs_input), 1)
            theirs_times.append(t)
    error = ((ours_features - theirs_features).norm() / theirs_features.norm()).item()
    ours_s, theirs_s = float(np.median(ours_times)), float(np.median(theirs_times))
    print(
        f"float32 cpu: ours {ours_s:.2f} s, Meta's {theirs_s:.2f} s, "
        f"speed-up x{theirs_s / ours_s:.2f} (goal >= 1.3), relative error {error:.1e}"
    )

    image = test_image()
    fp32 = SamPredictor(ours)
    fp32.set_image(image)
    ours.image_encoder.to(torch.bfloat16)
    half = SamPredictor(ours)
    bf16_s, _ = timed(lambda: half.set_image(image), args.repeats)
    clicks = [(r, c) for r in range(128, 1024, 256) for c in range(128, 1024, 256)]
    ious = []
    for click in clicks:
        a, sa, _ = fp32.predict(points=[click])
        b, _sb, _ = half.predict(points=[click])
        ious.append(mask_iou(a[np.argmax(sa)], b[np.argmax(sa)]))
    print(
        f"bfloat16 cpu: {bf16_s:.2f} s per image (goal <= 4.5 s), x{ours_s / bf16_s:.2f} vs "
        f"our float32; mask IoU vs float32 over {len(clicks)} clicks: mean "
        f"{np.mean(ious):.3f}, min {np.min(ious):.3f} (goal >= 0.98)"
    )

    if torch.cuda.is_available():
        cuda_benchmark(ours, theirs)


def cuda_benchmark(ours, theirs, batch: int = 8, repeats: int = 5) -> None:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    pixels = torch.rand(batch, 3, 1024, 1024, device=device) * 255
    ours = ours.to(device)
    theirs = theirs.to(device)

    def run(model, dtype):
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32),
        ):
            model.image_encoder(
                model.preprocess(pixels).to(dtype if model is ours else torch.float32)
            )
        torch.cuda.synchronize()

    for label, model, dtype in (
        ("ours bf16", ours, torch.bfloat16),
        ("Meta's bf16 autocast", theirs, torch.bfloat16),
        ("Meta's fp32", theirs, torch.float32),
    ):
        if model is ours:
            model.image_encoder.to(dtype)
        run(model, dtype)
        seconds, _ = timed(lambda model=model, dtype=dtype: run(model, dtype), repeats)
        print(f"cuda {name} {label}: {batch / seconds:.1f} images/s (batch {batch})")


if __name__ == "__main__":
    main()
