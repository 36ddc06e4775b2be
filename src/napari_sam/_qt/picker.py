"""Picking among SAM's candidates in the Segment Anything widget: the whole / part /
subpart buttons and keys, and the preview of the chosen mask. A mixin of `SamWidget`:
it reads the widget's session and the view its prediction was made on."""

from __future__ import annotations

from ._base import UserError
from .sam_controls import show_candidate_buttons

__all__ = ["CandidatePicker"]


class CandidatePicker:
    """The candidates part of the widget's public API (`candidates`, `selected`,
    `select`, `select_whole` / `_part` / `_subpart`, `next_candidate`)."""

    def _show_candidates(self) -> None:
        if self.closed:
            return
        session = self.session
        decoded = session.decoded and self._prediction_view is not None
        candidates = session.candidates if decoded else []
        selected = session.selected_index if decoded else -1
        show_candidate_buttons(self, [c.name for c in candidates], [c.iou for c in candidates],
                               selected)  # fmt: skip
        if self._image_layer is not None and self.preview.layer is not None:
            self.preview.show(session.commit_masks() if decoded else [], self._prediction_view)

    def _show_choice(self) -> None:
        chosen = self.session.selected
        if chosen is not None:
            where = ""
            if chosen.tile is not None:  # a mask is cut at its tile's edge: say where that is
                top, left, bottom, right = chosen.tile
                where = f" In the tile of rows {top}-{bottom - 1}, columns {left}-{right - 1}."
            self.set_status(
                f"{chosen.name}: predicted IoU {chosen.iou:.2f}, {chosen.area} px.{where}"
            )
            self._choice_shown = True  # cleared with the candidates, see _reset_prediction

    @property
    def candidates(self) -> list:
        """The current candidates (name, mask, predicted IoU), largest first; in
        "one object per box" mode, one per box. Empty while the embedding is computed."""
        ready = self.session.decoded and self._prediction_view is not None
        return self.session.candidates if ready else []

    @property
    def selected(self):
        """The chosen candidate (None when there is none, or one object per box)."""
        return self.session.selected if self.candidates else None

    def select(self, which: str | int):
        """Choose a candidate: "whole", "part", "subpart" or an index."""
        if not self.candidates:
            raise UserError("There are no candidates: add a prompt first.")
        try:
            chosen = self.session.select(which)
        except ValueError as error:
            raise UserError(str(error)) from None
        self._show_choice()
        self._show_candidates()
        return chosen

    def _select_if_there(self, name: str) -> None:
        if any(c.name == name for c in self.candidates):
            self.select(name)

    def select_whole(self) -> None:
        self._select_if_there("whole")

    def select_part(self) -> None:
        self._select_if_there("part")

    def select_subpart(self) -> None:
        self._select_if_there("subpart")

    def next_candidate(self) -> None:
        if self.selected is not None:
            self.session.next_candidate()
            self._show_choice()
            self._show_candidates()
