"""Segment everything on a large image: the memory it takes, ours against the code from
before records kept their masks inside their boxes, each side in a fresh process.

The case of issue 13 (B11): a 3000 x 4000 (rows x cols) microscopy image (scikit-image's
immunohistochemistry sample, tiled) with a few hundred objects, the bundled `tiny_cells`
model, 16 points per side and the filters off (predicted IoU 0, stability 0, box NMS at
0.9). Measured: the peak resident memory of `generate` + `masks_to_labels` above the
memory at their start (the peak is reset through /proc/self/clear_refs on Linux, else a
thread samples the resident memory every millisecond), their time, the records, and
how many pixels of the two label images agree. The embedding is computed once and
given to both sides. Goal: under 1.5 GB (the reference took about 9.6 GB).

The reference is src/napari_sam/automatic.py at git revision `--reference` (default
40e6316, the last one whose records held full-size masks), loaded next to the current
package.

    python benchmarks/bench_everything_memory.py [--shape 3000 4000] \
        [--points-per-side 16] [--box-nms-thresh 0.9] [--reference 40e6316 | --no-reference]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL_BYTES = 1.5e9


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux.")


class PeakMemory:
    """Peak resident memory inside the block above the memory at its start, in bytes."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.start = _status_kib("VmRSS")
        self._sampled, self._stop = self.start, None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _status_kib("VmRSS"))

    def __exit__(self, *exc) -> None:
        if self._stop is None:
            peak = _status_kib("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, _status_kib("VmRSS"))
        self.above = (peak - self.start) * 1024


def large_image(shape: tuple[int, int]) -> np.ndarray:
    from skimage import data

    tile = data.immunohistochemistry()  # 512 x 512 RGB, many nuclei
    reps = (-(-shape[0] // tile.shape[0]), -(-shape[1] // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[: shape[0], : shape[1]])


def load_generator_module(side: str, folder: Path):
    if side == "ours":
        import napari_sam.automatic

        return napari_sam.automatic
    spec = importlib.util.spec_from_file_location(
        "napari_sam._automatic_reference", folder / "automatic_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child(side: str, folder: Path) -> None:
    """One measurement, in this (fresh) process; prints one JSON line."""
    import torch

    from napari_sam import load_model

    params = json.loads((folder / "params.json").read_text())
    module = load_generator_module(side, folder)
    model = load_model("tiny_cells", device="cpu", progress=False)
    image = np.load(folder / "image.npy")
    embedding = torch.load(folder / "embedding.pt", weights_only=False)
    generator = module.AutomaticMaskGenerator(model, **params)
    with PeakMemory() as peak:
        start = time.perf_counter()
        records = generator.generate(image, embedding=embedding)
        labels = module.masks_to_labels(records, image.shape[:2])
        seconds = time.perf_counter() - start
    np.save(folder / f"labels_{side}.npy", labels)
    print(json.dumps({"bytes": peak.above, "seconds": seconds, "records": len(records)}))


def measure(side: str, folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", side, "--folder", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"The {side} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--box-nms-thresh", type=float, default=0.9)
    parser.add_argument("--reference", default="40e6316", help="git revision of the reference")
    parser.add_argument("--no-reference", action="store_true", help="measure ours only")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder)
        return

    import torch

    from napari_sam import SamPredictor, load_model

    params = dict(
        points_per_side=args.points_per_side,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=args.box_nms_thresh,
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        image = large_image(tuple(args.shape))
        predictor = SamPredictor(load_model("tiny_cells", device="cpu", progress=False))
        predictor.set_image(image)
        np.save(folder / "image.npy", image)
        torch.save(predictor.image_embedding, folder / "embedding.pt")
        (folder / "params.json").write_text(json.dumps(params))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image "
              f"{image.shape}, tiny_cells, {params}", flush=True)  # fmt: skip

        ours = measure("ours", folder)
        print(f"  ours:      peak {ours['bytes'] / 1e9:.2f} GB above the start, "
              f"{ours['seconds']:.1f} s, {ours['records']} records "
              f"(goal < {GOAL_BYTES / 1e9:.1f} GB: "
              f"{'met' if ours['bytes'] < GOAL_BYTES else 'NOT met'})", flush=True)  # fmt: skip
        if args.no_reference:
            return
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.reference}:src/napari_sam/automatic.py"],
            capture_output=True,
            text=True,
        )
        if source.returncode != 0:
            raise SystemExit(f"No reference at git revision {args.reference}: "
                             f"{source.stderr.strip()} (pass --no-reference).")  # fmt: skip
        (folder / "automatic_reference.py").write_text(source.stdout)
        theirs = measure("reference", folder)
        agree = np.mean(
            np.load(folder / "labels_ours.npy") == np.load(folder / "labels_reference.npy")
        )
        print(f"  reference: peak {theirs['bytes'] / 1e9:.2f} GB above the start, "
              f"{theirs['seconds']:.1f} s, {theirs['records']} records "
              f"(git {args.reference}, full-size masks)\n"
              f"  memory x{theirs['bytes'] / max(ours['bytes'], 1):.1f} less, time "
              f"x{theirs['seconds'] / ours['seconds']:.2f}; labels agree on "
              f"{100 * agree:.3f} % of the pixels", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
