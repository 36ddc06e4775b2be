"""`napari-sam`: list, download and inspect models from a shell (clusters, scripts).

napari-sam models              names, sizes, licences, whether cached
napari-sam download NAME...    fetch and verify into the cache folder
napari-sam info                versions, devices, cache folder
napari-sam finetune ...        fine-tune a model on image/label files (finetune -h)
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from importlib import metadata


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KB", "MB"):
        if count < 1000:
            return f"{count:.0f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


_CACHED = {
    "bundled": "bundled",
    "verified": "yes",
    "differs": "no (file differs)",
    "missing": "no",
}


def _models(_: argparse.Namespace) -> int:
    from .zoo import cache_dir, cache_state, registry

    entries = registry().values()
    width = max(len(entry.name) for entry in entries)
    states = {entry.name: cache_state(entry) for entry in entries}
    column = max(map(len, _CACHED.values()))
    print(f"{'NAME':<{width}}  {'SIZE':>8}  {'LICENCE':<10}  {'CACHED':<{column}}  DESCRIPTION")
    for entry in entries:
        print(
            f"{entry.name:<{width}}  {_size(entry.size):>8}  {entry.licence:<10}  "
            f"{_CACHED[states[entry.name]]:<{column}}  {entry.description}"
        )
    print(f"\ncache folder: {cache_dir()}")
    if "differs" in states.values():
        print(
            "file differs: a file of the model's name is in the cache folder but is not the "
            "published one (another release, a re-saved copy?). 'napari-sam download NAME' "
            "fetches the published file and keeps the other beside it, renamed "
            "<file>.unverified; to use the other file, load it as a local file."
        )
    return 0


def _download(args: argparse.Namespace) -> int:
    import warnings

    from .zoo import ModelDownloadError, UnknownModelError, fetch, get_entry

    try:  # every name checked before the first download starts
        entries = [get_entry(name) for name in args.names]
    except UnknownModelError as error:
        print(f"napari-sam: {error}", file=sys.stderr)
        return 2
    failed = 0
    for entry in entries:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                path = fetch(entry, progress=False if args.quiet else None)
        except ModelDownloadError as error:
            print(f"napari-sam: {error}", file=sys.stderr)
            failed += 1
            continue
        finally:
            for warning in caught:  # e.g. a hand-placed file moved aside
                print(f"napari-sam: {warning.message}", file=sys.stderr)
        print(f"{entry.name}: {path}")
    return 1 if failed else 0


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _info(_: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .zoo import CACHE_ENV, available_devices, cache_dir, resolve_device, resolve_dtype

    device = resolve_device("auto")
    rows = {
        "napari-sam-labeler": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "pooch": _version("pooch"),
        "napari": _version("napari"),
        "devices": ", ".join(available_devices()),
        "default device": f"{device} ({resolve_dtype('auto', device)})".replace("torch.", ""),
        "cache folder": f"{cache_dir()} (set {CACHE_ENV} to change)",
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


def _read_array(path: str, labels: bool = False):
    """An image or label file as a numpy array: .npy, .tif/.tiff (tifffile), else any
    format imageio reads (png, jpg, ...). `labels`: a palette (indexed-colour) image is
    read as its indices, the ids, not as the colours they are shown in."""
    from pathlib import Path

    import numpy as np

    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    if labels:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as indexed:
                if indexed.mode in ("P", "PA"):
                    return np.asarray(indexed.convert("P") if indexed.mode == "PA" else indexed)
        except UnidentifiedImageError:
            pass  # not a format Pillow reads: imageio may
    import imageio.v3 as iio

    return iio.imread(path)


def _is_rgb(image, labels) -> bool:
    """Whether the image's last axis is colour: one axis more than its labels, 3 or 4 long."""
    return image.ndim == labels.ndim + 1 and image.shape[-1] in (3, 4)


def _finetune(args: argparse.Namespace) -> int:
    import time

    from .training.finetuning import finetune, labelled_slices
    from .zoo import load_model

    if len(args.images) != len(args.labels):
        print(
            f"napari-sam: got {len(args.images)} images but {len(args.labels)} label files; "
            "give one label file per image, in the same order.",
            file=sys.stderr,
        )
        return 2
    pairs = []
    try:
        for image_path, labels_path in zip(args.images, args.labels, strict=True):
            image, labels = _read_array(image_path), _read_array(labels_path, labels=True)
            try:  # labelled_slices refuses labels that are not integer id images
                pairs += labelled_slices(image, labels, rgb=_is_rgb(image, labels))
            except ValueError as error:
                raise ValueError(f"{labels_path} (with {image_path}): {error}") from None
        model = load_model(
            args.model,
            device=args.device,
            dtype="float32" if args.full else "auto",
            progress=False if args.quiet else None,
        )
    except (OSError, ValueError, LookupError, RuntimeError) as error:
        print(f"napari-sam: {error}", file=sys.stderr)
        return 1
    if not pairs:
        print("napari-sam: the label files hold no labels to train on.", file=sys.stderr)
        return 1
    start = time.perf_counter()
    every = max(1, args.steps // 20)

    def report(step: int, total: int, stats: dict) -> None:
        checked = "held_out_iou" in stats
        if not args.quiet and (step % every == 0 or step == total or checked):
            iou = f"  held-out IoU {stats['held_out_iou']:.3f}" if checked else ""
            print(
                f"step {step}/{total}  loss {stats['loss']:.3f}{iou}  "
                f"{time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    try:
        result = finetune(
            model,
            pairs,
            steps=args.steps,
            decoder_only=not args.full,
            out_path=args.out,
            progress=report,
            holdout=args.holdout,
            seed=args.seed,
            learning_rate=args.lr,
            metadata={"base_model": str(args.model)},
            warn=False,  # said below, in the CLI's words
        )
    except ValueError as error:
        print(f"napari-sam: {error}", file=sys.stderr)
        return 1

    print(
        f"{len(pairs)} 2D examples: {result.training_objects} objects for training, "
        f"{result.held_out_objects} held out"
    )
    if result.improved:
        print(result.summary())
    else:  # did not improve, or could not be checked
        print(f"napari-sam: warning: {result.summary()}", file=sys.stderr)
    print(f"saved {result.path}")
    return 0


def _segment(args: argparse.Namespace) -> int:
    """Segment everything in each image file into a label TIFF in --out."""
    import warnings
    from pathlib import Path

    import numpy as np
    import tifffile

    from .automatic import (
        NoObjectsWarning,
        check_params,
        choose_method,
        segment_everything,
        segment_everything_slices,
    )
    from .zoo import load_model

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"napari-sam: --out {out} is a file, not a folder; nothing written.",
              file=sys.stderr)  # fmt: skip
        return 2
    inputs = [Path(p).resolve() for p in args.images]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        print(f"napari-sam: no such file: {', '.join(missing)}; nothing written.",
              file=sys.stderr)  # fmt: skip
        return 2
    targets = [out.resolve() / f"{p.stem}_labels.tif" for p in inputs]
    shared = [str(p) for p, t in zip(inputs, targets, strict=True) if targets.count(t) > 1]
    if shared:
        print(f"napari-sam: these inputs would share one label file: {', '.join(shared)}; "
              "nothing written. Segment them in separate runs with different --out "
              "folders (or give each a distinct name).", file=sys.stderr)  # fmt: skip
        return 2
    clashes = [str(t) for t in targets if t in inputs or (t.exists() and not args.overwrite)]
    if clashes:
        print(f"napari-sam: {clashes[0]} exists; nothing written. Choose another --out "
              "(inputs are never overwritten; --overwrite replaces earlier results).",
              file=sys.stderr)  # fmt: skip
        return 2
    given = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
             "stability_score_thresh": args.stability_score_thresh,
             "center_distance_threshold": args.center_distance_threshold,
             "boundary_distance_threshold": args.boundary_distance_threshold,
             "foreground_threshold": args.foreground_threshold,
             "min_size": args.min_size}  # fmt: skip
    params = {name: value for name, value in given.items() if value is not None}
    model = load_model(args.model, device=args.device)
    try:  # bad parameters fail before anything is written, --out included
        check_params(choose_method(model, args.method), params)
    except ValueError as error:
        print(f"napari-sam: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for source, target in zip(inputs, targets, strict=True):
        try:
            image = np.asarray(_read_array(str(source)))
        except (OSError, ValueError) as error:  # not an image file, or a damaged one
            print(f"napari-sam: {source.name}: cannot read it as an image ({error}); the "
                  "files before it are written, the rest not.", file=sys.stderr)  # fmt: skip
            return 2
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoObjectsWarning)
            try:
                if image.ndim == 2 or rgb:
                    labels = segment_everything(model, image, args.method, **params)
                else:  # a stack: every 2D slice
                    labels = segment_everything_slices(model, image, method=args.method,
                                                       **params)  # fmt: skip
            except ValueError as error:
                print(f"napari-sam: {source.name}: {error}", file=sys.stderr)
                return 2
        for warning in caught:
            print(f"napari-sam: {source.name}: {warning.message}", file=sys.stderr)
        tifffile.imwrite(target, labels.astype(np.int32), compression="zlib")
        print(f"{source.name}: {int(labels.max(initial=0))} objects -> {target}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sam", description="Segment Anything models for napari-sam-labeler."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "models", help="list the models, their sizes and licences, and whether they are cached"
    ).set_defaults(run=_models)
    download = commands.add_parser("download", help="download and verify models")
    download.add_argument("names", nargs="+", metavar="NAME", help="model names (see models)")
    download.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    download.set_defaults(run=_download)
    commands.add_parser("info", help="versions, devices and the cache folder").set_defaults(
        run=_info
    )
    tune = commands.add_parser(
        "finetune",
        help="fine-tune a model on images and their instance labels",
        description="Fine-tune a SAM model on images and instance label images (tiff, png, "
        "npy; nD files are cut into 2D slices along their leading axes). A share of the "
        "labelled objects is held out to measure single-click IoU before and after.",
    )
    tune.add_argument("--images", nargs="+", required=True, metavar="IMG", help="image files")
    tune.add_argument(
        "--labels", nargs="+", required=True, metavar="LBL", help="label files, one per image"
    )
    tune.add_argument("--model", required=True, help="model name (see models) or checkpoint")
    tune.add_argument("--out", required=True, help="where to save the fine-tuned checkpoint")
    tune.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    tune.add_argument(
        "--full", action="store_true", help="train the image encoder too (default: decoder)"
    )
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    tune.add_argument(
        "--holdout", type=float, default=0.2, help="share of objects held out (default 0.2)"
    )
    tune.add_argument("--lr", type=float, default=None, help="learning rate")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tune.set_defaults(run=_finetune)
    segment = commands.add_parser(
        "segment",
        help="segment everything in image files into label TIFFs",
        description="Automatic instance segmentation of each image (tiff, png, jpg, npy; "
        "2D gray or RGB, or a stack segmented slice by slice) into DIR/<name>_labels.tif "
        "(int32). Inputs are never overwritten.",
    )
    segment.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    segment.add_argument("--out", required=True, metavar="DIR", help="folder for the labels")
    segment.add_argument("--model", default="tiny_cells",
                         help="model name or checkpoint (default tiny_cells)")  # fmt: skip
    segment.add_argument("--method", choices=("amg", "ais"), default=None,
                         help="ais: the model's instance head (default where the model has "
                         "one); amg: grid of point prompts")
    segment.add_argument("--points-per-side", type=int, default=None,
                         help="grid size for amg (default 32)")  # fmt: skip
    segment.add_argument("--pred-iou-thresh", type=float, default=None,
                         help="amg: keep masks above this predicted IoU (default: the "
                         "model's own, e.g. 0.25 for tiny_cells, else 0.8)")
    segment.add_argument("--stability-score-thresh", type=float, default=None,
                         help="amg: keep masks at least this stable (default: the model's "
                         "own, e.g. 0.5 for tiny_cells, else 0.9)")
    for name, default in (("center-distance-threshold", 0.5),
                          ("boundary-distance-threshold", 0.5), ("foreground-threshold", 0.5)):
        segment.add_argument(f"--{name}", type=float, default=None,
                             help=f"ais: see napari_sam.automatic.AIS_HELP (default: the "
                             f"model's own, see ais_defaults; else {default})")
    segment.add_argument("--min-size", type=int, default=None,
                         help="ais: remove objects of fewer pixels (default 10)")
    segment.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    segment.add_argument("--overwrite", action="store_true",
                         help="replace label files of an earlier run")  # fmt: skip
    segment.set_defaults(run=_segment)
    # Listed here for help; its own arguments are parsed by napari_sam._qt.demo.
    commands.add_parser(
        "demo", help="open napari with a sample image and the widget (demo -h for options)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `napari-sam` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from ._qt.demo import main as demo_main  # imports napari only when asked for

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
