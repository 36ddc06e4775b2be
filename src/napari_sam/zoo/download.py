"""Downloading registered models into the cache folder, verified, with progress.

pooch streams each download into a temporary file in the cache folder and moves it to
its final name only after its hash matched, so a half-downloaded or tampered file is
never taken for a model; a cached file whose hash no longer matches is fetched again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pooch

from .registry import ModelEntry

CACHE_ENV = "NAPARI_SAM_CACHE"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60

ProgressCallback = Callable[[int, int], None]
"""progress(done_bytes, total_bytes); total_bytes is 0 when the server does not say."""


class ModelDownloadError(RuntimeError):
    """A model could not be downloaded; the message says how to install it by hand."""


def cache_dir() -> Path:
    """The folder models are cached in: $NAPARI_SAM_CACHE if set, else the user cache
    folder of this platform (e.g. ~/.cache/napari-sam-labeler on Linux)."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(pooch.os_cache("napari-sam-labeler"))


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"


def cached_path(entry: ModelEntry) -> Path:
    """Where `entry`'s file lies once downloaded (it may not exist yet); a bundled
    model's file inside the package."""
    if entry.bundled:
        return BUNDLED_DIR / entry.filename
    return cache_dir() / entry.filename


def is_downloaded(entry: ModelEntry) -> bool:
    """Whether a downloadable model's file is in the cache folder (False for bundled
    models, and where the cache folder cannot be read)."""
    try:
        return not entry.bundled and cached_path(entry).is_file()
    except OSError:
        return False


def _bundled_file(entry: ModelEntry) -> Path:
    path = cached_path(entry)
    algorithm = entry.known_hash.partition(":")[0]
    if not path.is_file() or f"{algorithm}:{pooch.file_hash(str(path), alg=algorithm)}" != (
        entry.known_hash
    ):
        raise ModelDownloadError(
            f"The model file bundled with napari-sam-labeler, {path}, is missing or "
            "damaged. Reinstall the package: pip install --force-reinstall "
            "napari-sam-labeler"
        )
    return path


class ConsoleProgress:
    """The default progress callback: a tqdm bar on stderr, closed when complete."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total or None, desc=self.description, unit="B", unit_scale=True)
        self._bar.update(done - self._bar.n)
        if total and done >= total:
            self._bar.close()


class _PoochProgress:
    """Adapts a `ProgressCallback` to the object pooch drives: it sets `total`, calls
    `update(chunk_size)` per chunk (the last one counted full-sized, hence the cap),
    then `reset()`, `update(total)` and `close()` once the file is complete."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.total = 0
        self._done = 0
        self._finishing = False

    def update(self, count: int) -> None:
        if self._finishing:
            return  # close() reports the end, also when the total was unknown
        self._done += count
        if self.total:
            self._done = min(self._done, self.total)
        self.callback(self._done, self.total)

    def reset(self) -> None:
        self._finishing = True

    def close(self) -> None:
        final = self.total or self._done
        self.callback(final, final)


def fetch(entry: ModelEntry, progress: ProgressCallback | bool | None = None) -> Path:
    """The verified local file of `entry`, downloaded first if it is not cached or its
    cached copy no longer matches the hash.

    `progress`: a `ProgressCallback`; None for a console progress bar; False for none.
    A bundled model is not downloaded: its file in the package is verified instead.
    Raises `ModelDownloadError` naming the URL, the cache folder and the file name to
    place there by hand.
    """
    import requests  # pooch's own dependency; imported late as pooch does

    if entry.bundled:
        return _bundled_file(entry)
    folder = cache_dir()
    if progress is None:
        progress = ConsoleProgress(entry.name)
    bar = _PoochProgress(progress) if progress else False
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK_BYTES, timeout=_TIMEOUT_S)
    try:
        path = pooch.retrieve(
            url=entry.url,
            known_hash=entry.known_hash,
            fname=entry.filename,
            path=folder,
            downloader=downloader,
        )
    except requests.exceptions.HTTPError as error:
        status = error.response.status_code if error.response is not None else "error"
        raise _download_error(entry, folder, f"the server answered HTTP {status}") from error
    except requests.exceptions.RequestException as error:
        raise _download_error(entry, folder, f"{type(error).__name__}: {error}") from error
    except ValueError as error:  # pooch: the downloaded file's hash does not match
        raise ModelDownloadError(
            f"The file downloaded for model '{entry.name}' from {entry.url} is not the "
            f"published one, so it was discarded and nothing was cached. {error}"
        ) from error
    except OSError as error:
        raise _download_error(entry, folder, f"cannot write the cache folder: {error}") from error
    return Path(path)


def _download_error(entry: ModelEntry, folder: Path, reason: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"Could not download model '{entry.name}' from {entry.url}: {reason}.\n"
        f"To install it by hand, download that URL on a machine with internet and put the "
        f"file into the cache folder {folder} under the name {entry.filename}, i.e. as\n"
        f"    {folder / entry.filename}\n"
        f"(set {CACHE_ENV} to use another cache folder)."
    )
