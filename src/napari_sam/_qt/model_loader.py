"""Loading a model for a widget: a zoo name or a checkpoint path, in a `Job` with the
download's progress and a cancel; a newer request supersedes the ones before it."""

from __future__ import annotations

from collections.abc import Callable

from ._base import DockWidget, Job, OneJobAtATime
from ._messages import notify

__all__ = ["ModelLoader"]


class ModelLoader(OneJobAtATime):
    """Loads models for `owner`; `on_loaded(model, name)` runs in the GUI thread for the
    latest request only. `load(..., wait=True)` raises the loading error itself."""

    def __init__(self, owner: DockWidget, on_loaded: Callable[[object, str], None]) -> None:
        self.owner = owner
        self.on_loaded = on_loaded
        self.requested = False  # a model was asked for: the deferred default stays out
        self._generation = 0
        self._error: Exception | None = None

    def supersede(self) -> None:
        """Forget the load in flight: it stops at its next download chunk, and whatever it
        returns is ignored."""
        self._generation += 1
        self.cancel()
        self.job = None

    def load(self, name: str, device: str, dtype: str, wait: bool) -> None:
        """Load `name` (zoo name or path) on `device`. With `wait`, return once loaded,
        raising the error (short: no worker frames or chained causes) when it failed."""
        self.requested = True
        self.supersede()
        generation = self._generation
        self._error = None

        def work(job: Job):
            from ..zoo import load_model

            def progress(done: int, total: int) -> None:
                job.report(done, total or 0)

            return load_model(name, device=device, dtype=dtype, progress=progress)

        def current() -> bool:
            return generation == self._generation and not self.owner.closed

        def returned(model) -> None:
            if current():
                self.on_loaded(model, name)

        def errored(error: Exception) -> None:
            if current():
                self._error = error  # load(wait=True) raises it
                self.owner.set_status(f"Could not load the model: {error}")
                notify(f"Segment Anything: could not load the model: {error}", "error")

        def finished() -> None:
            if generation == self._generation:
                self.job = None
            self.owner.update_busy()

        self.job = self.owner.start_job(work, f"SAM: loading {name}", returned=returned,
                                         errored=errored, finished=finished)  # fmt: skip
        self.owner.update_busy()
        self.owner.set_status(f"Loading {name}...")
        if wait:
            self.owner.wait_for(lambda: self.job is None)
            error, self._error = self._error, None
            if error is not None and generation == self._generation:
                raise error.with_traceback(None) from None
