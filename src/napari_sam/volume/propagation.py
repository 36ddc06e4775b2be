"""Objects through a stack: segment on one slice, propagate slice by slice both ways until
each object ends, correct any slice and propagate again from it.

>>> obj = propagate(load_model("tiny_cells"), volume, 12, points=[[40, 52]])
>>> obj.mask.shape, obj.scores.shape            # (Z, Y, X) bool, (Z,) NaN where absent

`Propagation` is the stateful engine under `propagate`, `AnnotationSession.propagate`
and tracking: several objects decoded together per slice (one batch), slices the user
prompted kept as anchors, corrections re-run outward from the corrected slice.
Coordinates are (row, col) pixels of a slice; the stack axis is `axis` of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .rules import (
    PropagationSettings,
    check_prompts,
    claim_pixels,
    interior_point,
    mask_box,
    mask_to_logits,
    neighbours,
)
from .stack import PropagationCancelled, SliceStack

__all__ = ["Propagation", "VolumeObject", "propagate", "propagate_objects"]


@dataclass(frozen=True)
class VolumeObject:
    """One object through a stack.

    planes: {slice index: (H, W) bool mask}, the slices where the object is present.
    scores: (n,) float32 predicted IoU per slice of the stack, NaN where absent.
    prompted: the slices whose mask came from the user's prompts (anchors).
    ends: why the object ends on each side, (below its first slice, above its last): a
        stop-rule reason, "end of stack", or "division".
    parent: the number of the object it divided from (tracking), else None.
    layout: (position of the stack axis among the three axes, whether the plane's rows
        come after its columns in the data): how `mask` orders its axes.
    """

    planes: dict[int, np.ndarray]
    scores: np.ndarray
    prompted: tuple[int, ...]
    ends: tuple[str, str]
    parent: int | None = None
    layout: tuple[int, bool] = (0, False)

    @property
    def slices(self) -> list[int]:
        """Sorted indices of the slices where the object is present."""
        return sorted(self.planes)

    def __repr__(self) -> str:
        where = f"slices {self.slices[0]}-{self.slices[-1]}" if self.planes else "no slice"
        parent = "" if self.parent is None else f", parent={self.parent}"
        return (f"VolumeObject({where} of {len(self.scores)}, prompted={self.prompted}, "
                f"ends={self.ends}{parent})")

    @property
    def mask(self) -> np.ndarray:
        """The object as a bool array in the data's axis order: (Z, Y, X) for a (Z, Y, X)
        volume propagated along axis 0."""
        if not self.planes:
            raise ValueError("The object is present on no slice.")
        plane_shape = next(iter(self.planes.values())).shape
        stacked = np.zeros((len(self.scores), *plane_shape), bool)
        for index, plane in self.planes.items():
            stacked[index] = plane
        position, transposed = self.layout
        if transposed:
            stacked = stacked.transpose(0, 2, 1)
        return np.moveaxis(stacked, 0, position)


@dataclass
class _Plane:
    logits: np.ndarray  # (h, w) low-res, the next slice's mask prompt
    mask: np.ndarray  # (H, W) bool
    score: float


@dataclass
class _Object:
    planes: dict[int, _Plane] = field(default_factory=dict)
    anchors: set[int] = field(default_factory=set)
    first: int = 0  # the slices it may occupy (a division ends the parent, starts daughters)
    last: int = 10**9
    parent: int | None = None
    ends: list[str] = field(default_factory=lambda: ["", ""])


class Propagation:
    """Objects of one `SliceStack` (see module docstring). Add objects on a slice with
    `add_objects`, then `run()`; `correct` / `divide` and `run()` again."""

    def __init__(self, stack: SliceStack, settings: PropagationSettings | None = None) -> None:
        from ..predictor import SamPredictor

        self.stack = stack
        self.settings = settings or PropagationSettings()
        self._objects: list[_Object] = []
        self._tasks: list[tuple[int, int, int]] = []  # (object, last slice done, direction)
        self._predictor = SamPredictor(stack.model)

    # -- objects -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._objects)

    @property
    def pending(self) -> bool:
        """Whether propagation is queued (new objects, corrections, a cancelled run)."""
        return bool(self._tasks)

    @property
    def objects(self) -> list[VolumeObject]:
        """Every object's current state (see `VolumeObject`)."""
        return [self.object(i) for i in range(len(self._objects))]

    def object(self, number: int) -> VolumeObject:
        found = self._object(number)
        scores = np.full(len(self.stack), np.nan, np.float32)
        for index, plane in found.planes.items():
            scores[index] = plane.score
        axes = sorted([self.stack.axis, *self.stack.base.displayed])
        displayed = self.stack.base.displayed
        layout = (axes.index(self.stack.axis), displayed[0] > displayed[1])
        planes = {i: p.mask for i, p in sorted(found.planes.items())}
        return VolumeObject(planes, scores, tuple(sorted(found.anchors)), tuple(found.ends),
                            found.parent, layout)  # fmt: skip

    def logits(self, number: int, index: int) -> np.ndarray | None:
        """Object `number`'s low-res logits (h, w) on slice `index` (None: absent)."""
        plane = self._object(number).planes.get(index)
        return None if plane is None else plane.logits

    def _object(self, number: int) -> _Object:
        if isinstance(number, bool) or not 0 <= int(number) < len(self._objects):
            raise ValueError(f"No object {number}; there are {len(self._objects)}.")
        return self._objects[int(number)]

    def add_objects(self, index: int, *, points=None, labels=None, boxes=None, masks=None,
                    logits=None, parent: int | None = None,
                    both_ways: bool = True) -> list[int]:  # fmt: skip
        """Segment new objects on slice `index`, one per prompt, and queue their
        propagation (`run` does it). Returns their numbers.

        points: (K, 2) one positive point per object, or (K, N, 2) with labels (K, N)
            (1 positive, 0 negative); boxes: (K, 4); points and boxes together describe
            K objects. masks: (K, H, W) bool, objects given whole (e.g. committed
            labels), with `logits` (K, h, w) when they come from SAM.
        A single point per object gives SAM's three candidates; the highest predicted
        IoU is kept. Raises ValueError for an index outside the stack or bad prompts.
        """
        index = self.stack.check_index(index)
        if masks is not None:
            planes = self._planes_from_masks(index, masks, logits)
        else:
            planes = self._planes_from_prompts(index, points, labels, boxes)
        numbers = []
        for plane in planes:
            obj = _Object(parent=parent)
            if not both_ways:
                obj.first = index
            obj.planes[index], obj.anchors = plane, {index}
            self._objects.append(obj)
            numbers.append(len(self._objects) - 1)
            self._queue(numbers[-1], index, both_ways)
        return numbers

    def correct(self, number: int, index: int, *, points=None, labels=None, box=None,
                mask=None, logits=None) -> None:  # fmt: skip
        """Re-segment object `number` on slice `index` from new prompts (points (N, 2)
        with labels (N,), a box, or a whole (H, W) mask), refining its mask there when it
        has one, keep that slice as the user's, and queue propagation outward from it:
        slices between it and the next prompted slice are redone, prompted slices kept.
        `logits` (h, w): SAM's low-res logits of `mask`, when it comes from SAM."""
        obj, index = self._object(number), self.stack.check_index(index)
        if mask is not None:
            given = None if logits is None else np.asarray(logits)[None]
            plane = self._planes_from_masks(index, np.asarray(mask)[None], given)[0]
        else:
            previous = obj.planes.get(index)
            refine = None if previous is None else previous.logits
            plane = self._decode_prompts(index, points, labels, box, refine)
        obj.planes[index] = plane
        obj.anchors.add(index)
        obj.first, obj.last = min(obj.first, index), max(obj.last, index)
        self._queue(number, index, True)

    def divide(self, number: int, index: int, points) -> list[int]:
        """Object `number` divides on slice (frame) `index` into one daughter per point
        ((K, 2), K >= 2): it ends at `index - 1`, the daughters start at `index` and are
        propagated forward only, with `parent` = number. Returns the daughters' numbers."""
        obj, index = self._object(number), self.stack.check_index(index)
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        if len(points) < 2:
            raise ValueError("A division needs one point per daughter, at least 2.")
        if index <= obj.first:
            raise ValueError(f"Object {number} starts at {obj.first}: it cannot divide at "
                             f"{index}; divide on a later frame.")  # fmt: skip
        obj.last = index - 1
        obj.ends[1] = "division"
        for gone in [i for i in obj.planes if i >= index]:
            del obj.planes[gone]
        obj.anchors = {i for i in obj.anchors if i < index}
        self._tasks = [t for t in self._tasks if t[0] != number or t[2] < 0]
        daughters = self.add_objects(index, points=points, parent=number, both_ways=False)
        for daughter in daughters:
            self._objects[daughter].ends[0] = "division"
        return daughters

    def _queue(self, number: int, index: int, both_ways: bool) -> None:
        directions = (1, -1) if both_ways else (1,)
        self._tasks = [t for t in self._tasks if not (t[0] == number and t[1] == index)]
        self._tasks.extend((number, index, d) for d in directions)

    # -- running -------------------------------------------------------------------
    def run(self, cancelled: Callable[[], bool] | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[VolumeObject]:  # fmt: skip
        """Propagate every queued object until it ends; returns `objects`.

        Objects on the same slice are decoded in one batch. `progress(done, total)`
        after each slice (total: the slices that could still be visited);
        `cancelled()` before each slice raises `PropagationCancelled`; what was done
        stays, and the rest stays queued for the next `run`."""
        done = 0
        while self._tasks:
            groups: dict[int, list[tuple[int, int, int]]] = {}
            for task in self._tasks:
                groups.setdefault(task[1] + task[2], []).append(task)
            index = self._tasks[0][1] + self._tasks[0][2]  # in turn, batching alike ones
            group = groups[index]
            if cancelled is not None and cancelled():
                raise PropagationCancelled("Propagation was cancelled.")
            moving = [t for t in group if self._may_enter(t, index)]
            for task in group:
                self._tasks.remove(task)
            if moving:
                self._step(index, moving)
            done += 1
            if progress is not None:
                progress(done, done + len({t[1] + t[2] for t in self._tasks}))
        return self.objects

    def _may_enter(self, task: tuple[int, int, int], index: int) -> bool:
        number, _, direction = task
        obj = self._objects[number]
        side = 0 if direction < 0 else 1
        if not 0 <= index < len(self.stack):
            obj.ends[side] = "end of stack"
        elif not obj.first <= index <= obj.last:
            obj.ends[side] = "division"  # a daughter's start or its parent's end
        elif index not in obj.anchors:  # (an anchor is not where the object ends)
            return True
        return False

    def _step(self, index: int, tasks: list[tuple[int, int, int]]) -> None:
        """Decode slice `index` for every task in one batch; keep or end each object."""
        stop = self.settings.stop
        previous = [self._objects[n].planes[i] for n, i, _ in tasks]
        logits, scores, full = self._decode_from(index, previous)
        masks = claim_pixels(full)
        for k, (number, _, direction) in enumerate(tasks):
            obj, before = self._objects[number], previous[k]
            area = int(masks[k].sum())
            union = np.logical_or(masks[k], before.mask).sum()
            overlap = np.logical_and(masks[k], before.mask).sum() / max(int(union), 1)
            high, low = (full[k] > 1.0).sum(), (full[k] > -1.0).sum()
            reason = stop.why_stop(score=float(scores[k]), stability=float(high / max(low, 1)),
                                   overlap=float(overlap), area=area,
                                   previous_area=int(before.mask.sum()))  # fmt: skip
            if reason is None:
                obj.planes[index] = _Plane(logits[k], masks[k], float(scores[k]))
                self._tasks.append((number, index, direction))
            else:
                if not any((a - index) * direction > 0 for a in obj.anchors):
                    obj.ends[0 if direction < 0 else 1] = reason  # its outer end
                self._clear_beyond(obj, index, direction)

    def _clear_beyond(self, obj: _Object, index: int, direction: int) -> None:
        """Drop an earlier run's slices from `index` outward up to the next anchor."""
        while 0 <= index < len(self.stack) and index not in obj.anchors:
            obj.planes.pop(index, None)
            index += direction

    # -- decoding ------------------------------------------------------------------
    def _use(self, index: int):
        self._predictor.image_embedding = self.stack.embedding(index)
        return self._predictor

    def _decode_from(self, index: int, previous: Sequence[_Plane]):
        """Low-res logits (B, h, w), scores (B,), full-size logits (B, H, W) on slice
        `index`, each object prompted by its mask on the neighbouring slice."""
        settings, predictor = self.settings, self._use(index)
        batch = len(previous)
        boxes = points = labels = mask_inputs = None
        if settings.use_box:
            boxes = np.stack([mask_box(p.mask, settings.box_margin) for p in previous])
        if settings.use_mask:
            mask_inputs = np.stack([p.logits for p in previous])
        centres = np.stack([interior_point(p.mask) for p in previous])
        near = neighbours([p.mask for p in previous]) if settings.negative_points else \
            np.zeros((batch, batch), bool)  # fmt: skip
        if settings.use_point or near.any():
            own = [[centres[k]] if settings.use_point else [] for k in range(batch)]
            others = [[centres[j] for j in np.flatnonzero(near[k])] for k in range(batch)]
            width = max(len(a) + len(b) for a, b in zip(own, others, strict=True))
            points = np.zeros((batch, width, 2))
            labels = np.full((batch, width), -1)  # -1: padding, not a point
            for k in range(batch):
                mine = [*own[k], *others[k]]
                points[k, : len(mine)] = mine
                labels[k, : len(mine)] = [1] * len(own[k]) + [0] * len(others[k])
        multimask = settings.multimask and points is not None and mask_inputs is None
        low, scores = predictor.predict_batch(points, labels, boxes, mask_inputs, multimask)
        full = self._upscale_logits(low.reshape(-1, *low.shape[2:])).reshape(
            *low.shape[:2], *self.stack.plane_shape)
        # Of SAM's candidates, the one that continues the previous slice's mask best:
        # its predicted IoU is not reliable enough to choose (see StopRule.min_score).
        pick = np.array([np.argmax([_iou(f > 0, p.mask) for f in obj_full])
                         for obj_full, p in zip(full, previous, strict=True)])  # fmt: skip
        rows = np.arange(batch)
        return low[rows, pick], scores[rows, pick], full[rows, pick]

    def _upscale_logits(self, low: np.ndarray) -> np.ndarray:
        import torch

        embedding, model = self._predictor.image_embedding, self.stack.model
        with torch.inference_mode():
            batch = torch.as_tensor(low, device=model.device)[None]
            full = model.postprocess_masks(batch, embedding.input_size, embedding.original_size)
        return full[0].float().cpu().numpy()

    def _decode_prompts(self, index, points, labels, box, mask_input,
                        others: np.ndarray | None = None) -> _Plane:  # fmt: skip
        """One object from its prompts: of SAM's candidates the highest predicted IoU,
        among those covering none of `others` ((K, 2) points of other objects) if any."""
        predictor = self._use(index)
        masks, scores, logits = predictor.predict(points=points, labels=labels, box=box,
                                                  mask_input=mask_input)  # fmt: skip
        order = np.argsort(-scores)
        if others is not None and len(others):
            rows, cols = np.clip(np.round(others).astype(int).T, 0,
                                 np.array(masks.shape[1:])[:, None] - 1)  # fmt: skip
            free = [i for i in order if not masks[i][rows, cols].any()]
            order = free or order[np.argsort([masks[i].sum() for i in order])]
        best = int(order[0])
        return _Plane(logits[best], masks[best], float(scores[best]))

    def _planes_from_prompts(self, index, points, labels, boxes) -> list[_Plane]:
        points, labels, boxes = check_prompts(points, labels, boxes, self.stack.plane_shape)
        count = len(points) if points is not None else len(boxes)
        # Each object's first point: the others' masks must not swallow it.
        firsts = None if points is None else points[:, 0]
        planes = [
            self._decode_prompts(index, None if points is None else points[k],
                                 None if labels is None else labels[k],
                                 None if boxes is None else boxes[k], None,
                                 None if firsts is None else np.delete(firsts, k, axis=0))
            for k in range(count)
        ]  # fmt: skip
        if count > 1:  # objects started together share no pixel either
            full = self._upscale_logits(np.stack([p.logits for p in planes]))
            for plane, mask in zip(planes, claim_pixels(full), strict=True):
                plane.mask = plane.mask & mask
        return planes

    def _planes_from_masks(self, index, masks, logits) -> list[_Plane]:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.shape[1:] != self.stack.plane_shape:
            raise ValueError(f"Masks must be (K, {self.stack.plane_shape[0]}, "
                             f"{self.stack.plane_shape[1]}); got {masks.shape}.")  # fmt: skip
        if not all(m.any() for m in masks):
            raise ValueError("An empty mask cannot start an object.")
        embedding, model = self._use(index).image_embedding, self.stack.model
        if logits is None:
            grid = model.prompt_encoder.mask_input_size
            logits = [mask_to_logits(m, embedding.input_size, grid, model.img_size)
                      for m in masks]  # fmt: skip
        planes = [_Plane(np.asarray(lo, np.float32), m.copy(), 1.0)
                  for lo, m in zip(logits, masks, strict=True)]  # fmt: skip
        if len(planes) > 1:  # objects started together share no pixel
            full = self._upscale_logits(np.stack([p.logits for p in planes]))
            for plane, mask in zip(planes, claim_pixels(full), strict=True):
                plane.mask &= mask
        return planes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(int(np.logical_or(a, b).sum()), 1))


def propagate(model, volume, index: int, *, points=None, labels=None, box=None, mask=None,
              axis: int = 0, rgb: bool | None = None, embeddings=None, cache=None,
              settings: PropagationSettings | None = None, cancelled=None,
              progress=None) -> VolumeObject:  # fmt: skip
    """Segment one object on slice `index` of `volume` and propagate it through the stack.

    model: a `Sam`. volume: (Z, Y, X) or (Z, Y, X, 3|4) RGB (numpy, dask, zarr), any
    dtype; `axis` names the stacked axis (default 0). Prompts on that slice, (row, col)
    pixels: points (N, 2) with labels (N,) (1 positive, 0 negative; default all
    positive), box (min_row, min_col, max_row, max_col), or mask (H, W) bool (e.g. a
    committed label). embeddings: {slice: ImageEmbedding} from `embed_slices`; cache: an
    `EmbeddingCache`. settings: `PropagationSettings` (prompts, stop rule).
    Returns a `VolumeObject`: mask (Z, Y, X) bool, scores (Z,) predicted IoU (NaN where
    absent). Raises ValueError for a 2D image, a slice index outside the stack, prompts
    outside the slice or no prompt.
    """
    stack = SliceStack.of_volume(model, volume, axis, rgb, cache=cache, embeddings=embeddings)
    engine = Propagation(stack, settings)
    if mask is not None:
        engine.add_objects(index, masks=np.asarray(mask, bool)[None])
    else:
        points = None if points is None else np.asarray(points, dtype=float)
        if points is not None and (points.ndim != 2 or points.shape[-1] != 2):
            raise ValueError(f"Points are (row, col) on the slice, (N, 2) for one object; "
                             f"got shape {points.shape}.")  # fmt: skip
        points = None if points is None else points[None]
        labels = None if labels is None else np.asarray(labels).reshape(1, -1)
        boxes = None if box is None else np.asarray(box, dtype=float)[None]
        engine.add_objects(index, points=points, labels=labels, boxes=boxes)
    return engine.run(cancelled, progress)[0]


def propagate_objects(model, volume, index: int, *, points=None, boxes=None, masks=None,
                      axis: int = 0, rgb: bool | None = None, embeddings=None, cache=None,
                      settings: PropagationSettings | None = None, cancelled=None,
                      progress=None) -> list[VolumeObject]:  # fmt: skip
    """Many objects at once: one per point ((K, 2)), per box ((K, 4)) or per mask
    ((K, H, W)) on slice `index` (points and boxes together: object k has point k and box
    k), propagated together with one batched decoding per slice; objects never share a
    pixel of a slice. Arguments and errors as `propagate`."""
    stack = SliceStack.of_volume(model, volume, axis, rgb, cache=cache, embeddings=embeddings)
    engine = Propagation(stack, settings)
    engine.add_objects(index, points=points, boxes=boxes, masks=masks)
    return engine.run(cancelled, progress)
