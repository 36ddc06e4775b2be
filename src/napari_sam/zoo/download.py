"""Downloading registered models into the cache folder, verified, with progress.

pooch streams each download into a temporary file in the cache folder and moves it to
its final name only after its hash matched, so a half-downloaded or tampered file is
never taken for a model. A file in the cache folder counts as the model only when it
matches the published hash (remembered in `verified`, so multi-GB files are hashed once).
A file of the model's name that does not match was put there by someone (another
release, a re-saved copy): it is never overwritten, but moved aside once the published
file has been downloaded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pooch

from .registry import ModelEntry
from .verified import matches, remember

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


CacheState = Literal["bundled", "verified", "differs", "missing"]


def cache_state(entry: ModelEntry) -> CacheState:
    """How `entry`'s file stands: "bundled" (it ships in the package), "verified" (the
    published file is in the cache folder), "differs" (a file of that name is there but
    does not match the published hash: another release, a re-saved copy, a damaged
    copy) or "missing" (no file, or the cache folder cannot be read).

    The first check of a file hashes it (seconds for a multi-GB file); the result is
    remembered until the file's size, modification time or inode changes.
    """
    if entry.bundled:
        return "bundled"
    verdict = matches(cached_path(entry), entry.known_hash)
    return "missing" if verdict is None else "verified" if verdict else "differs"


def is_downloaded(entry: ModelEntry) -> bool:
    """Whether the published file of a downloadable model is in the cache folder, verified
    against its known hash (see `cache_state`; False for bundled models, for a file that
    differs, and where the cache folder cannot be read)."""
    return cache_state(entry) == "verified"


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


class _DownloadFailed(Exception):
    """Why pooch could not bring the published file; becomes a `ModelDownloadError`."""


def fetch(entry: ModelEntry, progress: ProgressCallback | bool | None = None) -> Path:
    """The verified local file of `entry`, downloaded first if it is not cached.

    `progress`: a `ProgressCallback`; None for a console progress bar; False for none.
    A bundled model is not downloaded: its file in the package is verified instead.
    A file of the model's name that does not match the published hash is kept: the
    published file is downloaded beside it, then the file found is renamed
    `<name>.unverified` (or `.unverified-2`, ...; with a warning) and the published one
    takes its name; when the download fails, nothing is changed.
    Raises `ModelDownloadError` naming the URL, the cache folder and the file name to
    place there by hand (and, for a file that differs, how to load it as a local file).
    """
    if entry.bundled:
        return _bundled_file(entry)
    folder = cache_dir()
    path = folder / entry.filename
    state = cache_state(entry)
    if state == "verified":
        return path
    staging = entry.filename if state == "missing" else f"{entry.filename}.download"
    try:
        downloaded = _retrieve(entry, folder, staging, progress)
        if state == "differs":
            aside = _replace_keeping(path, downloaded)
            warnings.warn(
                f"{path} was not the published file of model '{entry.name}' (it does not "
                f"match {entry.known_hash}); it is kept as {aside}, and the published "
                "file, just downloaded, took its name.",
                stacklevel=2,
            )
    except _DownloadFailed as failure:
        raise _download_error(entry, folder, str(failure), state == "differs") from None
    except OSError as error:
        reason = f"cannot write the cache folder: {error}"
        raise _download_error(entry, folder, reason, state == "differs") from None
    remember(path, entry.known_hash)
    return path


def _retrieve(entry: ModelEntry, folder: Path, fname: str, progress) -> Path:
    """pooch's verified download of `entry` into `folder`/`fname`."""
    import requests  # pooch's own dependency; imported late as pooch does

    if progress is None:
        progress = ConsoleProgress(entry.name)
    bar = _PoochProgress(progress) if progress else False
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK_BYTES, timeout=_TIMEOUT_S)
    try:
        return Path(
            pooch.retrieve(
                url=entry.url,
                known_hash=entry.known_hash,
                fname=fname,
                path=folder,
                downloader=downloader,
            )
        )
    # The chained exceptions (requests, urllib3, pooch) add only noise to the reason.
    except requests.exceptions.HTTPError as error:
        status = error.response.status_code if error.response is not None else "error"
        raise _DownloadFailed(f"the server answered HTTP {status}") from None
    except requests.exceptions.RequestException as error:
        raise _DownloadFailed(f"{type(error).__name__}: {_network_reason(error)}") from None
    except ValueError as error:  # pooch: the downloaded file's hash does not match
        raise _DownloadFailed(
            "the file it served is not the published one, so it was discarded and nothing "
            f"was cached ({error})"
        ) from None


def _network_reason(error: BaseException) -> str:
    """The operating system's words for a network failure ("[Errno 111] Connection
    refused"), found in the chain requests and urllib3 wrap around it; else the first
    line of the error."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return str(current)
        for linked in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


def _replace_keeping(path: Path, downloaded: Path) -> Path:
    """Move the file at `path` aside to a free `<name>.unverified[-N]`, then put
    `downloaded` in its place; the name it was moved to."""
    aside, number = path.with_name(f"{path.name}.unverified"), 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.unverified-{number}")
    if path.exists():
        os.replace(path, aside)
    os.replace(downloaded, path)
    return aside


def _download_error(
    entry: ModelEntry, folder: Path, reason: str, differs: bool
) -> ModelDownloadError:
    path = folder / entry.filename
    if differs:
        return ModelDownloadError(
            f"The file {path} is not the published file of model '{entry.name}': it does "
            f"not match {entry.known_hash} (another release or a re-saved copy?), and "
            f"downloading the published file from {entry.url} failed: {reason}.\n"
            f"To use the file you have, load it as a local file: load_model({str(path)!r}), "
            "or choose 'local file...' in the widget's model list.\n"
            "To install the published model by hand, download that URL on a machine with "
            f"internet and put it in place of that file (set {CACHE_ENV} to use another "
            "cache folder)."
        )
    return ModelDownloadError(
        f"Could not download model '{entry.name}' from {entry.url}: {reason}.\n"
        f"To install it by hand, download that URL on a machine with internet and put the "
        f"file into the cache folder {folder} under the name {entry.filename}, i.e. as\n"
        f"    {path}\n"
        f"(set {CACHE_ENV} to use another cache folder)."
    )
