"""Where an annotation session decodes its prompts: in a tile of the view at the view's
own resolution, or on the whole view resized to the model's input. A part of
`AnnotationSession` (the geometry is `napari_sam.tiled`'s, shared with `TiledPredictor`).

A model resizes what it encodes to its input size (1024 px for Meta's models, 256 px for
the bundled `tiny_cells`): a 512 px view shrinks by 2 for `tiny_cells`, a 4096 px one by
4 for Meta's. With `tiled` on (the default), a view more than 1.25 times the input size
is cut into overlapping tiles of the input size, and each prompt is decoded in the tile
that holds all of it with the most room around it; a tile is embedded when a prompt first
needs it. On scikit-image's IHC image this raises the bundled model's single-click mean
IoU on 41 hand-checked nuclei from 0.07 to 0.37 (`benchmarks/bench_tiny_cells.py
--images 0 --tiled`). A prompt no tile holds (points or a box spread wider than a tile
less its overlap) and a negative point on a propagated object (whose logits are the whole
view's) are decoded on the whole view.
"""

from __future__ import annotations

import numpy as np

from ..tiled import choose_tile, prompt_corners, tile_grid, tile_holds
from .candidates import Candidate, PromptSet, prompts_grew, rank_candidates

__all__ = ["TILE_ABOVE", "TiledDecoding"]

# Tiles only pay when resizing loses detail: below this many times the model's input
# size, the few tiles each cost an encoder run (seconds for Meta's models on a CPU) for
# little gain in resolution.
TILE_ABOVE = 1.25

Frame = tuple[int, int, int, int] | None  # a tile of the view, or None: the whole view


class TiledDecoding:
    """Mixin of `AnnotationSession`: needs its view, model, prompts and last prediction."""

    _tiled = True
    # IoU of the masks decoded in tiles with their whole-view versions that the last
    # propagation started from (the lowest); None when none was decoded again.
    seed_agreement: float | None = None

    @property
    def tiled(self) -> bool:
        """Decode prompts in tiles of the model's input size at the view's own resolution
        when the view is more than 1.25x that size (True, the default), or always on the
        whole view resized to the model's input (False, as `SamPredictor`)."""
        return self._tiled

    @tiled.setter
    def tiled(self, value: bool) -> None:
        if bool(value) != self._tiled:
            self._tiled = bool(value)
            self._reset_prediction()
            self._stale = self.has_prompts

    def view_tiles(self) -> list[tuple[int, int, int, int]]:
        """The tiles of the view prompts are decoded in, (min_row, min_col, max_row,
        max_col) with exclusive ends, a quarter of a tile overlapping the next; [] when
        prompts are decoded on the whole view (`tiled` off, no model or view, or a view
        not larger than 1.25x the model's input)."""
        if not self._tiled or self._model is None or self._view is None:
            return []
        side = int(self._model.img_size)
        shape = self.view_shape()
        if max(shape) <= TILE_ABOVE * side:
            return []
        return tile_grid(shape, side, side // 4)

    def embedding_frames(self) -> list[Frame]:
        """The frames the current prompts are decoded in (None: the whole view); with no
        prompts, every tile (embedding ahead of the clicks)."""
        if not self.has_prompts:
            return self.view_tiles() or [None]
        if self.one_object_per_box and len(self._boxes):
            return list(dict.fromkeys(self.box_frames()))
        return [self.single_object_plan()[0]]

    def box_frames(self) -> list[Frame]:
        """The frame of each box in one-object-per-box mode."""
        tiles, shape = self.view_tiles(), self.view_shape()
        return [choose_tile(tiles, prompt_corners(None, box, shape), shape)
                for box in self._boxes]  # fmt: skip

    def single_object_plan(self) -> tuple[Frame, np.ndarray | None]:
        """(frame, mask_input) for decoding the prompts as one object. Prompts only added
        since the last prediction stay in its frame, refined by its selected logits, as
        long as that frame holds them; a negative point on a propagated object is
        decoded on the whole view with that object's logits."""
        box = self._boxes[-1] if len(self._boxes) else None
        shape = self.view_shape()
        corners = prompt_corners(self._points, box, shape)
        prompts = PromptSet.from_arrays(self._points, self._labels, box)
        last = self._last_tile
        if self._last_logits is not None and prompts_grew(self._last_prompts, prompts) \
                and (last is None or tile_holds(last, corners)):  # fmt: skip
            return last, self._last_logits
        if (self._labels == 0).any():
            # A negative point cuts a propagated object's mask (positive points alone
            # decode afresh: refining shrank the bundled model's masks).
            logits = self.propagated_logits(self._points)
            if logits is not None:
                return None, logits
        return choose_tile(self.view_tiles(), corners, shape), None

    # -- propagation works on whole views ----------------------------------------------
    def _chosen(self) -> list[Candidate]:
        """The selected candidate, or every box's object (one object per box)."""
        return [self.selected] if self.selected is not None else self.candidates

    def chosen_in_tiles(self) -> bool:
        """Whether the selected candidate (or a box's object) was decoded in a tile."""
        return any(c.tile is not None for c in self._chosen())

    def whole_view_versions(self) -> list[Candidate]:
        """The selected candidate (or every box's object) as propagation needs it: one
        decoded in a tile is decoded again on the whole view, from the prompts that made
        it (no mask prompt) and of the same reading (whole, part or subpart). Propagation
        decodes every other slice on its whole view, and a seed at another resolution
        ends it at once (its area rule). Embeds the whole view first when it has no
        embedding (in this thread; a GUI runs `embedding_job([None])` in a worker first)."""
        chosen = self._chosen()
        self.seed_agreement = None
        if not any(c.tile is not None for c in chosen):
            return chosen
        again = self._decode_on_whole_view()
        pairs = zip(chosen, again, strict=True)
        self.seed_agreement = min(_iou(shown.mask, used.mask) for shown, used in pairs)
        return again

    def _decode_on_whole_view(self) -> list[Candidate]:
        """`whole_view_versions`' decoding, embedding the whole view when needed."""
        embedding = self.embedding_for(self.embedding_key())
        if embedding is None:
            result = self.embedding_job([None])()
            self.store_embedding(result)
            embedding = result.embedding
        predictor = self._predictor
        predictor.image_embedding = embedding
        if self.selected is None:  # one object per box
            masks, scores = predictor.predict_boxes(self._boxes)
            pairs = enumerate(zip(masks, scores, strict=True))
            return [Candidate(f"box {i + 1}", m, float(s), np.zeros(0)) for i, (m, s) in pairs]
        box = self._boxes[-1] if len(self._boxes) else None
        points = self._points if len(self._points) else None
        masks, scores, logits = predictor.predict(
            points=points, labels=None if points is None else self._labels, box=box
        )
        again = rank_candidates(masks, scores, logits)
        same = [c for c in again if c.name == self.selected.name]
        return same or [max(again, key=lambda c: c.iou)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
