"""One click on a 1024 x 1024 image with vit_b weights: 1 point -> 3 masks at full
resolution, median over many clicks; ours against Meta's predictor in the same process.

    python benchmarks/bench_click.py [--clicks 50]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import test_image, timed, twin_models
from napari_sam import SamPredictor
from napari_sam.model import CONFIGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clicks", type=int, default=50)
    args = parser.parse_args()
    import segment_anything

    ours, theirs = twin_models(CONFIGS["vit_b"], seed=0)
    image = test_image()
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    reference = segment_anything.SamPredictor(theirs)
    reference.set_image(image)
    rng = np.random.default_rng(0)
    clicks = rng.integers(0, 1024, (args.clicks, 2))

    def ours_click(point=clicks[0]):
        return predictor.predict(points=[point])

    def theirs_click(point=clicks[0]):
        return reference.predict(point_coords=point[None, ::-1], point_labels=np.array([1]))

    ours_click(), theirs_click()  # warm-up
    ours_times, theirs_times = [], []
    for p in clicks:  # interleaved: both see the same machine load
        ours_times.append(timed(lambda p=p: ours_click(p), 1)[0])
        theirs_times.append(timed(lambda p=p: theirs_click(p), 1)[0])
    ours_ms, theirs_ms = 1e3 * np.median(ours_times), 1e3 * np.median(theirs_times)
    masks = ours_click().masks
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, masks {masks.shape}")
    print(
        f"one click -> 3 masks: ours median {ours_ms:.1f} ms (goal <= 25 ms), "
        f"Meta's {theirs_ms:.1f} ms, x{theirs_ms / ours_ms:.2f}"
    )


if __name__ == "__main__":
    main()
