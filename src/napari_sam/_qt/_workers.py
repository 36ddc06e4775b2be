"""Worker threads of the plugin's widgets, started through napari's `create_worker`, and
waited for when Python exits.

Qt aborts the process when a thread of its pool still runs while the interpreter tears
Qt down (a viewer closed, or a script ending, during an embedding). Every worker started
here is therefore tracked until its function returns, and an `atexit` hook, after the
widgets were asked to cancel, waits (bounded) for the ones still running.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

_running: set[threading.Event] = set()
_lock = threading.Lock()
_cleanups: weakref.WeakSet = weakref.WeakSet()  # objects with a cleanup() to call at exit
EXIT_WAIT_S = 30.0


def _tracked(function: Callable) -> Callable:
    """`function` (plain or generator) marked running from now until it returns."""
    done = threading.Event()
    with _lock:
        _running.add(done)

    def finish() -> None:
        done.set()
        with _lock:
            _running.discard(done)

    if inspect.isgeneratorfunction(function):

        def generator(*args: Any, **kwargs: Any):
            try:
                return (yield from function(*args, **kwargs))
            finally:
                finish()

        return generator

    def plain(*args: Any, **kwargs: Any):
        try:
            return function(*args, **kwargs)
        finally:
            finish()

    return plain


def start_worker(function: Callable, **connections: Callable):
    """Run `function` in a napari worker thread; `connections` maps worker signals
    (returned, errored, yielded, finished) to callbacks. Returns the started worker."""
    from napari.qt.threading import create_worker

    worker = create_worker(_tracked(function), _ignore_errors=True)
    for signal, callback in connections.items():
        getattr(worker, signal).connect(callback)
    worker.start()
    return worker


def cleanup_at_exit(owner: Any) -> None:
    """Call `owner.cleanup()` when Python exits (if `owner` still lives then)."""
    _cleanups.add(owner)


def running() -> int:
    """How many tracked worker functions have not returned yet."""
    with _lock:
        return len(_running)


def wait_for_workers(timeout: float = EXIT_WAIT_S) -> bool:
    """Wait until every tracked worker function has returned; False on timeout."""
    deadline = time.monotonic() + timeout
    while running():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # releases the GIL the workers need to finish
    return True


@atexit.register
def _at_exit() -> None:
    for owner in list(_cleanups):
        with contextlib.suppress(Exception):  # best effort: Qt may be half gone already
            owner.cleanup()
    if wait_for_workers():
        # Deliver the finished workers' queued signals while Python still runs: left
        # in Qt's queue, they are destroyed after the interpreter and crash it.
        with contextlib.suppress(Exception):
            from qtpy.QtWidgets import QApplication

            if QApplication.instance() is not None:
                QApplication.processEvents()
