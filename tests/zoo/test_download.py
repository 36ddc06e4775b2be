"""Downloads from a local HTTP server: progress, cache, verification, network failures."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest

from napari_sam.zoo import (
    CACHE_ENV,
    ModelDownloadError,
    cache_dir,
    cached_path,
    load_model,
)
from napari_sam.zoo.download import _PoochProgress
from napari_sam.zoo.verified import RECORD_NAME
from tests.zoo import helpers as zoo_helpers
from tests.zoo.helpers import DROPPED, Recorder, assert_same_weights, entry_for

served, registered = zoo_helpers.served, zoo_helpers.registered  # fixtures


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_first_download_reports_progress_and_gives_the_model(served, registered, cache):
    server, state = served
    source = server.folder / "tiny.pt"
    entry = registered(entry_for("test_tiny", source, server.url("tiny.pt")))
    progress = Recorder()
    model = load_model("test_tiny", device="cpu", progress=progress)

    assert not model.training
    assert_same_weights(model, state)
    size = source.stat().st_size
    assert progress.calls[-1] == (size, size)
    assert all(total == size for _, total in progress.calls)
    done = [d for d, _ in progress.calls]
    assert done == sorted(done) and len(done) > 1  # 1 MiB chunks of a 2 MB file
    # Only the verified file is in the cache: no temporary left behind.
    assert _cache_files(cache) == sorted([entry.filename, RECORD_NAME])
    assert cached_path(entry).read_bytes() == source.read_bytes()


def test_second_load_comes_from_the_cache_with_the_server_stopped(served, registered):
    server, state = served
    registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    load_model("test_tiny", device="cpu", progress=False)
    server.stop()
    progress = Recorder()
    model = load_model("test_tiny", device="cpu", progress=progress)
    assert_same_weights(model, state)
    assert progress.calls == []  # nothing was downloaded


def test_hash_mismatch_is_refused_and_nothing_cached(served, registered, cache):
    server, _ = served
    entry = entry_for(
        "test_tiny",
        server.folder / "tiny.pt",
        server.url("tiny.pt"),
        known_hash="sha256:" + "0" * 64,
    )
    registered(entry)
    with pytest.raises(ModelDownloadError, match="not the published one") as error:
        load_model("test_tiny", progress=False)
    assert server.url("tiny.pt") in str(error.value)
    assert "0" * 64 in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert _cache_files(cache) == []


def _assert_manual_install_hint(error: Exception, url: str, cache: Path, filename: str) -> None:
    message = str(error)
    assert url in message
    assert str(cache) in message
    assert str(cache / filename) in message
    # Short: the reason is in the message, no chain of requests/urllib3/pooch errors.
    assert error.__cause__ is None and error.__suppress_context__
    assert "During handling" not in "".join(traceback.format_exception(error))
    assert len(message.splitlines()) <= 4 and "HTTPConnectionPool" not in message


def test_404_names_the_url_and_how_to_install_by_hand(served, registered, cache):
    server, _ = served
    entry = entry_for("test_tiny", server.folder / "tiny.pt", server.url("missing.pt"))
    registered(entry)
    with pytest.raises(ModelDownloadError, match="HTTP 404") as error:
        load_model("test_tiny", progress=False)
    _assert_manual_install_hint(error.value, entry.url, cache, entry.filename)
    assert _cache_files(cache) == []


def test_connection_refused_names_url_cache_folder_and_file(served, registered, cache):
    server, _ = served
    entry = entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt"))
    registered(entry)
    server.stop()  # the port is now closed: connections are refused
    with pytest.raises(ModelDownloadError, match="ConnectionError") as error:
        load_model("test_tiny", progress=False)
    assert "Connection refused" in str(error.value)  # the operating system's words
    _assert_manual_install_hint(error.value, entry.url, cache, entry.filename)
    assert _cache_files(cache) == []


def test_connection_dropped_halfway_leaves_nothing_in_the_cache(served, registered, cache):
    server, _ = served
    entry = entry_for(
        "test_tiny", server.folder / "tiny.pt", server.url(DROPPED.strip("/") + "/tiny.pt")
    )
    registered(entry)
    with pytest.raises(ModelDownloadError, match="Could not download") as error:
        load_model("test_tiny", progress=False)
    assert "Connection broken" in str(error.value)
    _assert_manual_install_hint(error.value, entry.url, cache, entry.filename)
    assert _cache_files(cache) == []


def test_corrupt_cached_file_is_fetched_again(served, registered, cache):
    server, state = served
    entry = registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    load_model("test_tiny", progress=False)
    path = cached_path(entry)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    # (a later write changes the modification time; made explicit, as the file system's
    # clock may not have ticked since the download)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))

    progress = Recorder()
    with pytest.warns(UserWarning, match="not the published file"):
        model = load_model("test_tiny", progress=progress)
    assert progress.calls  # downloaded again
    assert_same_weights(model, state)
    assert path.read_bytes() == (server.folder / "tiny.pt").read_bytes()
    # The damaged file is kept aside, not overwritten: it may have been someone's.
    assert path.with_name(path.name + ".unverified").read_bytes() == bytes(data)


def test_xxh128_verified_download(served, registered, cache):
    from tests.zoo.helpers import xxh128

    server, state = served
    source = server.folder / "tiny.pt"
    registered(entry_for("test_tiny", source, server.url("tiny.pt"), known_hash=xxh128(source)))
    assert_same_weights(load_model("test_tiny", progress=False), state)

    registered(
        entry_for("test_bad", source, server.url("tiny.pt"), known_hash="xxh128:" + "0" * 32)
    )
    with pytest.raises(ModelDownloadError, match="XXH128"):
        load_model("test_bad", progress=False)


def test_cache_folder_follows_the_environment_variable(served, registered, tmp_path, monkeypatch):
    server, _ = served
    entry = registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(CACHE_ENV, str(elsewhere))
    assert cache_dir() == elsewhere
    load_model("test_tiny", progress=False)
    assert (elsewhere / entry.filename).is_file()

    # Unset: the platform's user cache folder, as the README says (not pooch's answer
    # compared with itself).
    monkeypatch.delenv(CACHE_ENV)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    if sys.platform.startswith("linux"):
        assert cache_dir() == home / ".cache" / "napari-sam-labeler"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_dir() == tmp_path / "xdg" / "napari-sam-labeler"
    elif sys.platform == "darwin":
        assert cache_dir() == home / "Library" / "Caches" / "napari-sam-labeler"
    else:
        assert cache_dir().parts[-3:] == ("napari-sam-labeler", "napari-sam-labeler", "Cache")


def test_default_progress_is_a_console_bar(served, registered, capsys):
    server, _ = served
    registered(entry_for("test_tiny", server.folder / "tiny.pt", server.url("tiny.pt")))
    load_model("test_tiny")
    err = capsys.readouterr().err
    assert "test_tiny" in err and "100%" in err


@pytest.mark.parametrize("total", [2500, 0])  # 0: the server sent no Content-Length
def test_progress_callback_sees_monotonic_counts_and_the_end(total):
    # Drives the adapter exactly as pooch's HTTPDownloader does, 1000-byte chunks.
    progress = Recorder()
    bar = _PoochProgress(progress)
    bar.total = total
    for _ in range(3):
        bar.update(1000)
    bar.reset()
    bar.update(total)
    bar.close()
    done = [d for d, _ in progress.calls]
    assert done == sorted(done)
    assert progress.calls[-1] == (total or 3000, total or 3000)
    assert all(t == total for _, t in progress.calls[:-1])
