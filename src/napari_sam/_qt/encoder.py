"""Embedding the view on screen for a widget: the session's embedding job run as a
`Job` (progress per encoder block, cancel between blocks), one view at a time."""

from __future__ import annotations

import time

from ._base import DockWidget, Job, OneJobAtATime

__all__ = ["Encoder"]


class Encoder(OneJobAtATime):
    """Runs `owner.session`'s embedding job; `on_ready()` after an embedding is stored."""

    def __init__(self, owner: DockWidget, session, on_ready) -> None:
        self.owner = owner
        self.session = session
        self.on_ready = on_ready
        self._job_id = None

    def cancel(self) -> None:
        """Stop the embedding in flight (between encoder blocks) and forget it."""
        super().cancel()
        self.job = None

    def start(self, view_options: dict, frames=None) -> None:
        """Embed the session's current view (or these `frames` of it: None the whole
        view, or tiles) in a worker, unless that is under way."""
        session, owner = self.session, self.owner
        # the view, or the tiles a click needs
        frames = tuple(session.embedding_frames() if frames is None else frames)
        job_id = (session.embedding_key() or "lazy", session.view, repr(view_options), frames)
        if self.job is not None and job_id == self._job_id:
            return
        self.cancel()
        embed = session.embedding_job(frames)
        depth = (len(getattr(session.model.image_encoder, "blocks", ())) or 1) * len(frames)
        started = time.perf_counter()

        def work(job: Job):
            return embed(lambda done, _total: job.report(done))

        def returned(result) -> None:
            if session.store_embedding(result):
                owner.set_status(f"Embedding ready ({time.perf_counter() - started:.1f} s).")
                self.on_ready()

        def finished() -> None:
            if self.job is job:
                self.job = None
                if job.cancelled:
                    owner.set_status("Embedding cancelled.")
            owner.update_busy()

        job = owner.start_job(work, "SAM: embedding image", depth, returned=returned,
                              errored=lambda error: owner.failure("Embedding", error),
                              finished=finished)  # fmt: skip
        self.job, self._job_id = job, job_id
        owner.update_busy()
        owner.set_status("Computing the image embedding...")
