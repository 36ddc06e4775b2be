"""Model files placed in the cache folder by hand: only the published file counts as the
model; any other is never used silently, never lost, and the errors say how to use it."""

from __future__ import annotations

import os
import shutil

import pooch
import pytest
import torch

from napari_sam.zoo import (
    ModelDownloadError,
    cache_state,
    cached_path,
    default_model,
    is_downloaded,
    load_model,
)
from napari_sam.zoo.verified import RECORD_NAME
from tests.zoo import helpers as zoo_helpers
from tests.zoo.helpers import assert_same_weights, entry_for, tiny_state

served, registered = zoo_helpers.served, zoo_helpers.registered  # fixtures


@pytest.fixture
def hand_placed(served, registered):
    """The entry of the served tiny.pt, and another checkpoint (as of another release)
    placed by hand under the entry's cache name: (entry, its path, the state in it)."""
    server, _ = served
    entry = registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    other = tiny_state(seed=8)
    path = cached_path(entry)
    path.parent.mkdir(parents=True)
    torch.save(other, path)
    return entry, path, other


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != RECORD_NAME)


def test_offline_a_file_that_differs_is_not_the_model_and_the_error_says_how_to_use_it(
    served, hand_placed
):
    server, _ = served
    entry, path, other = hand_placed
    placed = path.read_bytes()
    server.stop()  # no internet

    assert cache_state(entry) == "differs"
    assert not is_downloaded(entry)  # so the widget does not mark it "(cached)"
    assert default_model() == "tiny_cells"  # the default is a model that loads
    with pytest.raises(ModelDownloadError) as error:
        load_model("test_tiny", progress=False)
    message = str(error.value)
    assert f"The file {path} is not the published file of model 'test_tiny'" in message
    assert f"does not match {entry.known_hash}" in message
    assert f"load_model({str(path)!r})" in message and "'local file...'" in message
    assert entry.url in message and "Connection refused" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__

    # The user's file is untouched and loads as a local file, as the message says.
    assert path.read_bytes() == placed
    assert _files(path.parent) == [path.name]
    assert_same_weights(load_model(str(path), device="cpu"), other)


def test_with_internet_a_file_that_differs_is_kept_aside_not_overwritten(served, hand_placed):
    server, state = served
    entry, path, _ = hand_placed
    placed = path.read_bytes()
    aside = path.with_name(path.name + ".unverified")
    with pytest.warns(UserWarning, match="not the published file") as warned:
        model = load_model("test_tiny", progress=False)
    assert str(path) in str(warned[0].message) and str(aside) in str(warned[0].message)
    assert_same_weights(model, state)
    assert path.read_bytes() == (server.folder / "tiny.pt").read_bytes()
    assert aside.read_bytes() == placed
    assert _files(path.parent) == [path.name, aside.name]  # no download left half-way
    assert cache_state(entry) == "verified" and default_model() == "test_tiny"

    # Another one later does not overwrite the first one kept.
    path.write_bytes(b"another copy")
    with pytest.warns(UserWarning, match=r"\.unverified-2"):
        load_model("test_tiny", progress=False)
    assert aside.read_bytes() == placed
    assert path.with_name(path.name + ".unverified-2").read_bytes() == b"another copy"
    assert is_downloaded(entry)


def test_a_wrong_download_leaves_the_file_that_differs_in_place(served, registered):
    server, _ = served
    entry = registered(
        entry_for(
            "test_tiny",
            server.folder / "tiny.pt",
            server.url("tiny.pt"),
            known_hash="sha256:" + "0" * 64,  # the server's file is not this one either
        )
    )
    path = cached_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the user's file")
    with pytest.raises(ModelDownloadError, match="not the published one") as error:
        load_model("test_tiny", progress=False)
    assert f"load_model({str(path)!r})" in str(error.value)
    assert path.read_bytes() == b"the user's file"
    assert _files(path.parent) == [path.name]


def test_a_copy_of_the_published_file_placed_by_hand_is_the_model(served, registered):
    server, state = served
    entry = registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    server.stop()
    assert cache_state(entry) == "missing" and default_model() == "tiny_cells"
    path = cached_path(entry)
    path.parent.mkdir(parents=True)
    shutil.copy(server.folder / "tiny.pt", path)
    assert cache_state(entry) == "verified" and default_model() == "test_tiny"
    assert_same_weights(load_model("test_tiny", progress=False), state)


def test_a_verification_is_remembered_until_the_file_changes(served, registered, monkeypatch):
    server, _ = served
    entry = registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    load_model("test_tiny", progress=False)  # downloaded, so verified
    hashed = []
    real_hash = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: hashed.append(a) or real_hash(*a, **k))

    for _ in range(3):
        assert is_downloaded(entry)
    load_model("test_tiny", progress=False)
    assert hashed == []  # from the record written after the download

    path = cached_path(entry)
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # touched
    assert is_downloaded(entry) and is_downloaded(entry)
    assert len(hashed) == 1  # hashed again once, then remembered again

    (path.parent / RECORD_NAME).write_text("{ damaged")
    assert is_downloaded(entry) and len(hashed) == 2  # a damaged record costs a hash

    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 2 * 10**9))
    assert cache_state(entry) == "differs" and len(hashed) == 3
    assert cache_state(entry) == "differs" and len(hashed) == 3  # a mismatch is remembered too
