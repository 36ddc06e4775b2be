import threading

import numpy as np
import pytest

from napari_sam.embeddings import DEFAULT_MAX_BYTES, EmbeddingCache, fingerprint


class Fake:
    def __init__(self, nbytes):
        self.nbytes = nbytes


def test_default_budget_is_2gb():
    assert EmbeddingCache().max_bytes == DEFAULT_MAX_BYTES == 2 * 1024**3


def test_lru_eviction_within_budget():
    cache = EmbeddingCache(max_bytes=100)
    a, b, c = Fake(40), Fake(40), Fake(40)
    cache.put(("a", 0, "m"), a)
    cache.put(("b", 0, "m"), b)
    assert cache.get(("a", 0, "m")) is a  # a is now most recent
    cache.put(("c", 0, "m"), c)  # over budget: b (least recently used) goes
    assert ("b", 0, "m") not in cache
    assert cache.get(("a", 0, "m")) is a and cache.get(("c", 0, "m")) is c
    assert cache.nbytes == 80 <= cache.max_bytes


def test_too_large_entry_is_not_stored_and_replace_updates_bytes():
    cache = EmbeddingCache(max_bytes=100)
    assert not cache.put("big", Fake(101))
    assert len(cache) == 0
    cache.put("k", Fake(30))
    cache.put("k", Fake(50))
    assert cache.nbytes == 50 and len(cache) == 1
    cache.max_bytes = 10
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError):
        EmbeddingCache(-1)


def test_discard_model_and_clear():
    cache = EmbeddingCache(1000)
    cache.put(("x", 0, 1), Fake(1))
    cache.put(("x", 0, 2), Fake(1))
    cache.put(("y", 1, 1), Fake(1))
    assert cache.discard_model(1) == 2
    assert cache.keys() == [("x", 0, 2)]
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_real_embeddings(tiny_model):
    from napari_sam import SamPredictor

    predictor = SamPredictor(tiny_model)
    predictor.set_image(np.zeros((20, 30), np.uint8))
    emb = predictor.image_embedding
    cache = EmbeddingCache(max_bytes=emb.nbytes * 2)
    for i in range(3):
        cache.put((i, 0, "tiny"), emb)
    assert len(cache) == 2 and cache.nbytes == 2 * emb.nbytes


def test_fingerprint_sees_content_shape_and_dtype():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert fingerprint(a) == fingerprint(a.copy())
    b = a.copy()
    b[0, 0] = 99
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) != fingerprint(a.reshape(4, 3))
    assert fingerprint(a) != fingerprint(a.astype(np.uint16))
    assert fingerprint(a.T) == fingerprint(np.ascontiguousarray(a.T))


def test_thread_safe_puts():
    cache = EmbeddingCache(max_bytes=50)

    def work(offset):
        for i in range(200):
            cache.put((offset, i), Fake(1))
            cache.get((offset, i - 1))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.nbytes == len(cache) == 50
