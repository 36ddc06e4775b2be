"""An in-memory cache of image embeddings, least recently used first out, within a byte budget.

Keys are (data fingerprint, slice key, model id): the fingerprint says *what* image was
embedded (a hash of the 2D view's bytes, so an edited image gets a new entry), the slice
key *where* it came from, the model id *which* model (and device/precision) embedded it.

>>> cache = EmbeddingCache(max_bytes=2 * 1024**3)
>>> key = (fingerprint(view), slice_key, model_id)
>>> embedding = cache.get(key)            # None when missing
>>> cache.put(key, predictor.image_embedding)

Thread-safe: a worker thread may `put` while the GUI thread `get`s. No torch import: an
entry is anything with an `nbytes` attribute (`napari_sam.ImageEmbedding`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MAX_BYTES", "EmbeddingCache", "fingerprint"]

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB


def fingerprint(array) -> str:
    """A content hash of an array (shape, dtype and bytes): xxh3-128, fast enough to
    run on every 2D view (about a millisecond for a 1024 x 1024 RGB image)."""
    import xxhash

    array = np.ascontiguousarray(np.asarray(array))
    digest = xxhash.xxh3_128()
    digest.update(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


class EmbeddingCache:
    """LRU cache of embeddings keyed by any hashable (by convention a 3-tuple, see module).

    An entry larger than the whole budget is not stored. `max_bytes=0` disables caching.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}.")
        self._max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.RLock()

    # -- budget --------------------------------------------------------------------
    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"max_bytes must be >= 0, got {value}.")
        with self._lock:
            self._max_bytes = int(value)
            self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes held by all entries together."""
        return self._nbytes

    # -- mapping -------------------------------------------------------------------
    def get(self, key: Hashable, default=None):
        """The entry for `key` (now the most recently used), or `default`."""
        with self._lock:
            if key not in self._entries:
                return default
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, embedding) -> bool:
        """Store `embedding` under `key`, evicting least recently used entries to stay
        within the budget. Returns False when the entry alone exceeds the budget."""
        size = int(embedding.nbytes)
        with self._lock:
            self.discard(key)
            if size > self._max_bytes:
                return False
            self._entries[key] = embedding
            self._nbytes += size
            self._evict()
            return True

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= int(old.nbytes)

    def discard_model(self, model_id: Hashable) -> int:
        """Drop every entry of one model (3-tuple keys); returns how many went."""
        with self._lock:
            keys = [k for k in self._entries if isinstance(k, tuple) and k[-1:] == (model_id,)]
            for key in keys:
                self.discard(key)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache({len(self)} entries, {self._nbytes / 1e6:.1f} MB of "
            f"{self._max_bytes / 1e6:.1f} MB)"
        )

    def _evict(self) -> None:
        while self._nbytes > self._max_bytes and self._entries:
            _, old = self._entries.popitem(last=False)
            self._nbytes -= int(old.nbytes)
