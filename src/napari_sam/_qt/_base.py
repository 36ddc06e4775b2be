"""What every dock widget of the plugin shares: a status line, connections to napari
events that are undone on close, waiting for workers from a script, user errors as
notifications, and `Job`, the one way a widget runs work in a thread with a progress bar
and a cancel.

A widget that leaves its dock (closed, removed with `remove_dock_widget`, or deleted with
its viewer) calls `cleanup()` once: jobs are cancelled, callbacks disconnected, then the
subclass's `_on_cleanup` runs.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QLabel, QWidget

from .._llvm_guard import hide_triton_if_llvm_is_loaded
from ._messages import UserError, notify
from ._workers import cleanup_at_exit, start_worker

__all__ = ["DockWidget", "Job", "JobCancelled", "OneJobAtATime", "UserError", "layers_of"]


class _Relay(QObject):
    """Carries a job's progress from its thread to the GUI thread (a queued signal)."""

    progressed = Signal(int, int)
    described = Signal(str)


class JobCancelled(Exception):
    """Raised inside a job's function (from its `check` callback) once it was cancelled."""


class Job:
    """A function run in a worker thread with a cancelable progress bar in napari's
    activity dock. The function receives the job; it calls `job.check()` between steps
    (raises `JobCancelled` once cancelled) and `job.report(done)` for progress, from its
    thread. Callbacks run in the GUI thread: `returned(value)` (not after a cancel),
    `errored(error)`, `yielded(value)` for generator functions, `finished()` always.
    """

    def __init__(
        self,
        function: Callable[[Job], Any],
        description: str,
        total: int = 0,
        *,
        returned: Callable[[Any], Any] | None = None,
        errored: Callable[[Exception], Any] | None = None,
        yielded: Callable[[Any], Any] | None = None,
        finished: Callable[[], Any] | None = None,
    ) -> None:
        from napari.utils import cancelable_progress

        self._cancelled = threading.Event()
        self._done = 0
        self.description = description
        self.progress = cancelable_progress(
            total=total, desc=description, cancel_callback=self._cancelled.set
        )
        self.running = True
        self._relay = _Relay()
        self._relay.progressed.connect(self._show_progress)
        self._relay.described.connect(self.progress.set_description)

        def on_returned(value) -> None:
            if returned is not None and not self.cancelled:
                returned(value)

        def on_errored(error: Exception) -> None:
            if not isinstance(error, JobCancelled) and errored is not None:
                errored(error)

        def on_finished() -> None:
            self.running = False
            self.progress.close()
            if finished is not None:
                finished()

        connections = {"returned": on_returned, "errored": on_errored, "finished": on_finished}
        if yielded is not None:
            connections["yielded"] = yielded
        if inspect.isgeneratorfunction(function):  # napari runs it as a generator worker

            def run():
                return (yield from function(self))

        else:

            def run():
                return function(self)

        self.worker = start_worker(run, **connections)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or self.progress.is_canceled

    def cancel(self) -> None:
        """Ask the function to stop at its next `check()`."""
        self._cancelled.set()

    def check(self) -> None:
        """From the worker: raise `JobCancelled` once the job was cancelled."""
        if self.cancelled:
            raise JobCancelled()

    def report(self, done: int, total: int = -1) -> None:
        """From the worker: progress `done` (of `total`, when given); raises
        `JobCancelled` once cancelled. The bar is updated in the GUI thread."""
        self.check()
        self._relay.progressed.emit(int(done), int(total))

    def set_description(self, text: str) -> None:
        """From any thread: the progress bar's text."""
        self._relay.described.emit(text)

    def _show_progress(self, done: int, total: int) -> None:
        if not self.running:
            return  # a late signal: the bar is closed
        if total >= 0 and total != self.progress.total:
            self.progress.total = total
        self.progress.update(done - self.progress.n)


class OneJobAtATime:
    """Something that runs one `Job` at a time (a model load, an embedding, a segment
    everything): `job` is the one running, or None."""

    job: Job | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.job is not None:
            self.job.cancel()


class DockWidget(QWidget):
    """Base of the plugin's dock widgets (see module docstring)."""

    name = "Segment Anything"  # prefixes notifications

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        hide_triton_if_llvm_is_loaded()  # napari's canvas may have loaded Mesa's libLLVM
        self.viewer = napari_viewer
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self._connected: list[tuple[Any, Any]] = []
        self._jobs: list[Job] = []
        self._closed = False
        cleanup_at_exit(self)  # stop workers before Python tears Qt down
        alive = weakref.ref(self)  # a closed viewer deletes the widget without closeEvent
        self.destroyed.connect(lambda *_: (widget := alive()) is not None and widget.cleanup())

    @property
    def closed(self) -> bool:
        """True once the widget left its dock (after `cleanup`)."""
        return self._closed

    # -- status and errors ---------------------------------------------------------------
    def set_status(self, text: str) -> None:
        """Show `text` in the widget's status line."""
        if not self._closed:
            self.status_label.setText(text)

    def user_error(self, error: Exception | str) -> None:
        """Show a problem the user can fix: status line and a warning notification."""
        self.set_status(str(error))
        notify(f"{self.name}: {error}", "warning")

    def failure(self, what: str, error: Exception) -> None:
        """Show an unexpected failure of `what` as an error notification."""
        self.set_status(f"{what} failed: {error}")
        notify(f"{self.name}: {what} failed: {error}", "error")

    # -- connections and jobs ------------------------------------------------------------
    def connect_event(self, emitter, callback) -> None:
        """Connect `callback` to a napari event, disconnected again at cleanup."""
        emitter.connect(callback)
        self._connected.append((emitter, callback))

    def start_job(self, function: Callable[[Job], Any], description: str, total: int = 0,
                  **callbacks: Callable) -> Job:  # fmt: skip
        """Run `function(job)` as a `Job` owned by this widget (cancelled at cleanup)."""
        finished = callbacks.pop("finished", None)

        def done() -> None:
            if job in self._jobs:
                self._jobs.remove(job)
            if finished is not None:
                finished()

        job = Job(function, description, total, finished=done, **callbacks)
        self._jobs.append(job)
        return job

    @property
    def busy(self) -> bool:
        """Whether a job of this widget is running."""
        return bool(self._jobs)

    def cancel(self) -> None:
        """Cancel every running job of this widget (they stop at their next step)."""
        for job in list(self._jobs):
            job.cancel()

    def wait_for(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        """Process Qt events until `condition()` holds (for scripts and tests).
        Raises TimeoutError after `timeout` seconds."""
        from qtpy.QtWidgets import QApplication

        start = time.perf_counter()
        while not condition():
            QApplication.processEvents()
            time.sleep(0.005)
            if timeout is not None and time.perf_counter() - start > timeout:
                raise TimeoutError(f"{self.name}: timed out waiting for a worker.")
        QApplication.processEvents()

    def wait(self, timeout: float | None = None) -> None:
        """Process events until this widget's jobs are done (for scripts and tests)."""
        self.wait_for(lambda: not self.busy, timeout)

    # -- lifetime ------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Cancel jobs, disconnect callbacks, then `_on_cleanup`. Runs once."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        for emitter, callback in self._connected:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                emitter.disconnect(callback)
        self._connected.clear()
        self._on_cleanup()

    def _on_cleanup(self) -> None:
        """What a subclass undoes when it leaves (keys, layer callbacks)."""

    def closeEvent(self, event) -> None:
        self.cleanup()
        super().closeEvent(event)

    def event(self, event) -> bool:
        # napari's remove_dock_widget takes the widget out of its dock with setParent(None).
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cleanup()
        return super().event(event)


def layers_of(viewer, kind) -> list:
    """The viewer's layers of type `kind`, bottom to top."""
    return [layer for layer in viewer.layers if isinstance(layer, kind)]
