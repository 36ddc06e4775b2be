"""Whether a model file in the cache folder is the published one, remembered between runs.

Hashing a multi-GB checkpoint takes seconds: too slow for every time the widget lists the
models. A small JSON record in the file's folder keeps, per file name, the size, the
modification time (ns), the inode and the hash last computed; a file whose size,
modification time or inode changed is hashed again. (An edit in place that keeps the size,
within one tick of the file system's clock, would go unseen; the download itself is always
verified.) The record only saves time: when it is lost, damaged or cannot be written,
files are hashed again.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import pooch

RECORD_NAME = "verified-hashes.json"
_lock = threading.Lock()


def _read(folder: Path) -> dict:
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write(folder: Path, record: dict) -> None:
    # A temporary file renamed over the record: a reader never sees half of it.
    try:
        handle, temporary = tempfile.mkstemp(prefix=".verified-", dir=folder)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(record, file, indent=1, sort_keys=True)
        os.replace(temporary, folder / RECORD_NAME)
    except OSError:
        return  # a read-only cache folder: the file is hashed again next time


def _stamp(path: Path) -> dict:
    # The inode also tells a file replaced by another (moved or copied there) apart.
    status = path.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "inode": status.st_ino}


def file_hash(path: Path, algorithm: str) -> str:
    """The hash "<algorithm>:<hex digest>" of the file at `path`: from the record when the
    file is unchanged since it was last hashed with `algorithm`, else computed and recorded.
    Raises OSError when the file cannot be read."""
    stamp = _stamp(path)
    with _lock:
        known = _read(path.parent).get(path.name)
    if isinstance(known, dict) and all(known.get(key) == stamp[key] for key in stamp):
        value = known.get("hash")
        if isinstance(value, str) and value.startswith(f"{algorithm}:"):
            return value
    value = f"{algorithm}:{pooch.file_hash(str(path), alg=algorithm)}"
    remember(path, value, stamp)
    return value


def remember(path: Path, value: str, stamp: dict | None = None) -> None:
    """Record that the file at `path`, as it is now (or as it was at `stamp`), has the
    hash `value` ("<algorithm>:<hex digest>")."""
    try:
        stamp = stamp or _stamp(path)
    except OSError:
        return
    with _lock:
        record = _read(path.parent)
        record[path.name] = {**stamp, "hash": value}
        _write(path.parent, record)


def matches(path: Path, known_hash: str) -> bool | None:
    """Whether the file at `path` has `known_hash` ("<algorithm>:<hex digest>"); None when
    there is no file there or it cannot be read."""
    algorithm = known_hash.partition(":")[0]
    try:
        if not path.is_file():
            return None
        return file_hash(path, algorithm).lower() == known_hash.lower()
    except OSError:
        return None
