"""`napari-sam`: list, download and inspect models from a shell (clusters, scripts).

napari-sam models              names, sizes, licences, whether cached
napari-sam download NAME...    fetch and verify into the cache folder
napari-sam info                versions, devices, cache folder
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


def _models(_: argparse.Namespace) -> int:
    from .zoo import cache_dir, cached_path, registry

    entries = registry().values()
    width = max(len(entry.name) for entry in entries)
    print(f"{'NAME':<{width}}  {'SIZE':>8}  {'LICENCE':<10}  {'CACHED':<6}  DESCRIPTION")
    for entry in entries:
        cached = "yes" if cached_path(entry).is_file() else "no"
        print(
            f"{entry.name:<{width}}  {_size(entry.size):>8}  {entry.licence:<10}  "
            f"{cached:<6}  {entry.description}"
        )
    print(f"\ncache folder: {cache_dir()}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from .zoo import ModelDownloadError, UnknownModelError, fetch, get_entry

    try:  # every name checked before the first download starts
        entries = [get_entry(name) for name in args.names]
    except UnknownModelError as error:
        print(f"napari-sam: {error}", file=sys.stderr)
        return 2
    failed = 0
    for entry in entries:
        try:
            path = fetch(entry, progress=False if args.quiet else None)
        except ModelDownloadError as error:
            print(f"napari-sam: {error}", file=sys.stderr)
            failed += 1
            continue
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
    # Listed here for help; its own arguments are parsed by napari_sam._demo.
    commands.add_parser(
        "demo", help="open napari with a sample image and the widget (demo -h for options)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `napari-sam` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from ._demo import main as demo_main  # imports napari only when asked for

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
