"""Shared by the zoo tests: a local HTTP server for checkpoints, and small checkpoints."""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import xxhash

from napari_sam.model import SamConfig, build_sam
from napari_sam.zoo import ModelEntry, register, unregister
from tests.reference import TINY, randomize_

DROPPED = "/dropped/"  # URL prefix: the server promises the whole file, sends half, hangs up


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if not self.path.startswith(DROPPED):
            super().do_GET()
            return
        data = (Path(self.directory) / self.path[len(DROPPED) :]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


class CheckpointServer:
    """Serves the files of `folder` on 127.0.0.1 at a port the OS picks."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        handler = functools.partial(_Handler, directory=str(folder))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self.running = False


def tiny_state(seed: int = 0, config: SamConfig = TINY) -> dict[str, torch.Tensor]:
    """A seeded random state_dict of a small model."""
    return randomize_(build_sam(config), seed=seed).state_dict()


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def xxh128(path: Path) -> str:
    return "xxh128:" + xxhash.xxh128(path.read_bytes()).hexdigest()


def entry_for(name: str, path: Path, url: str, known_hash: str | None = None) -> ModelEntry:
    """A registry entry for the file `path` served at `url` (TINY architecture)."""
    return ModelEntry(
        name=name,
        config=TINY,
        url=url,
        known_hash=known_hash or sha256(path),
        size=path.stat().st_size,
        licence="MIT",
        description="a tiny test model",
    )


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key].cpu(), value), key


# Fixtures shared by the download tests; a test module imports the ones it uses.
@pytest.fixture
def served(tmp_path):
    """A server on 127.0.0.1 serving tmp_path/"served", and the state in its tiny.pt."""
    folder = tmp_path / "served"
    folder.mkdir()
    state = tiny_state(seed=3)
    torch.save(state, folder / "tiny.pt")
    server = CheckpointServer(folder)
    yield server, state
    server.stop()


@pytest.fixture
def registered():
    """Registers test entries; removes them afterwards."""
    names = []

    def add(entry):
        names.append(entry.name)
        return register(entry)

    yield add
    for name in names:
        unregister(name)


class Recorder:
    """A progress callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
