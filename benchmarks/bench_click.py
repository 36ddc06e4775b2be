"""One click on a 1024 x 1024 image with vit_b weights: 1 point -> 3 masks at full
resolution, median over many clicks; ours against Meta's predictor in the same process.

With --tiled: the bundled model's clicks in `AnnotationSession` on scikit-image's
512 x 512 IHC image, decoded in tiles (clicks alternating between the four tiles, all
embedded beforehand) against the same clicks on the whole view, interleaved.

    python benchmarks/bench_click.py [--clicks 50] [--tiled]
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
    parser.add_argument("--tiled", action="store_true", help="tiles against the whole view")
    args = parser.parse_args()
    if args.tiled:
        return tiled_clicks(args.clicks)
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


def tiled_clicks(count: int) -> None:
    from skimage import data

    from napari_sam import load_model
    from napari_sam.interactive import AnnotationSession

    image = data.immunohistochemistry()
    sessions = {}
    for tiled in (True, False):
        session = AnnotationSession(load_model("tiny_cells"), tiled=tiled)
        session.set_image(image)
        session.compute_embedding()  # every tile, or the whole view
        sessions[tiled] = session
    # One click near the centre of each 256 px tile in turn (tiles at 0, 128, 256).
    corners = [(64, 64), (64, 448), (448, 448), (448, 64)]
    rng = np.random.default_rng(0)
    points = [np.add(corners[i % 4], rng.integers(-20, 21, 2)) for i in range(count)]

    def click(session, point):
        session.clear()
        session.add_point(tuple(point))
        return session.selected.mask

    times = {True: [], False: []}
    for session in sessions.values():
        click(session, points[0])  # warm-up
    for point in points:  # interleaved: both see the same machine load
        for tiled, session in sessions.items():
            times[tiled].append(timed(lambda s=session, p=point: click(s, p), 1)[0])
    last_tile = sessions[True].selected.tile
    tiled_ms, whole_ms = (1e3 * np.median(times[t]) for t in (True, False))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, IHC 512 x 512, "
          f"tiny_cells, {count} clicks over 4 tiles (last: {last_tile})")  # fmt: skip
    print(f"click -> preselected mask: in tiles median {tiled_ms:.1f} ms, whole view "
          f"{whole_ms:.1f} ms, tiles / whole x{tiled_ms / whole_ms:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
