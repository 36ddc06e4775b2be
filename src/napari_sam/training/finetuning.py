"""Fine-tuning a SAM model on a user's own (image, instance labels) pairs: the logic the
"Fine-tune SAM" widget and `napari-sam finetune` share.

>>> from napari_sam import load_model
>>> from napari_sam.training import finetune
>>> model = load_model("vit_b_lm")
>>> result = finetune(model, [(image, labels)], steps=200, out_path="mine.pt")
>>> result.before_iou, result.after_iou        # single-click IoU on held-out objects
>>> result.improved, result.best_step          # the saved weights are the best seen
>>> load_model("mine.pt")                      # config stored in the file

Held-out objects: a deterministic `holdout` share of all annotated objects (of all
images together, drawn with `seed`) is removed from the training labels and used only to
measure single-click IoU: at the start and every `eval_every` steps. Held-out objects
keep their pixels in the training images, but are never a training target. The weights
with the best held-out IoU (the starting ones count) are the ones kept and saved, so a
run never makes the model worse on them; a `FinetuneWarning` says when nothing improved.

No napari, no Qt: numpy in, a checkpoint file out.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._llvm_guard import hide_triton_if_llvm_is_loaded
from ..model import Sam
from .data import LabelledImage, check_labels, from_pairs, labelled_slices
from .evaluate import BestWeights, HeldOutScore
from .loop import Progress, TrainingConfig, train, trainable_parameters

__all__ = [
    "FinetuneResult",
    "FinetuneWarning",
    "finetune",
    "finetuned_models",
    "labelled_slices",
    "register_finetuned",
    "save_finetuned",
    "split_holdout",
    "unregister_finetuned",
]

METADATA_KEY = "napari_sam_finetune"  # ignored by checkpoint readers

Pair = LabelledImage | tuple[np.ndarray, np.ndarray]


class FinetuneWarning(UserWarning):
    """Fine-tuning did not improve the held-out IoU (the starting weights were kept), or
    no objects were held out to check it."""


@dataclass
class FinetuneResult:
    """What a fine-tuning run achieved.

    `before_iou`: mean single-click IoU on the held-out objects at the start (step 0).
    `after_iou`: that of the weights the model holds now (and `path` holds): the best
    evaluated, `best_step` the step they come from (0: the starting weights). `final_iou`:
    that of the weights of the last step, before the best were restored (nan when not
    evaluated, e.g. cancelled). `improved`: whether `after_iou` > `before_iou`; None when
    nothing was held out (then no IoU is known and the last weights are kept).
    `evaluations`: (step, IoU) of every check. `path`: the checkpoint written (None when
    cancelled or no `out_path` was given). `steps_done` < `steps` when cancelled.
    """

    before_iou: float
    after_iou: float
    path: Path | None
    steps_done: int
    steps: int
    cancelled: bool
    training_objects: int
    held_out_objects: int
    history: list[dict] = field(default_factory=list, repr=False)
    best_step: int = 0
    improved: bool | None = None
    final_iou: float = float("nan")
    evaluations: list[tuple[int, float]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """The outcome in words: the held-out IoU before and after, or that nothing
        improved (the starting weights are kept), or that nothing could be checked."""
        saved = f" ({self.path})" if self.path else ""
        if self.improved is None:
            return (
                f"No held-out objects of 16 pixels or more ({self.held_out_objects} held "
                f"out, {self.training_objects} trained on), so nothing could be checked: "
                f"the model after {self.steps_done} steps is kept{saved} unchecked. Hold "
                "out some objects (holdout=0.2 of 2 or more) to know whether it helped."
            )
        if not self.improved:
            return (
                f"Fine-tuning did not improve the single-click IoU on the "
                f"{self.held_out_objects} held-out objects: {self.before_iou:.3f} at the "
                f"start, {self.final_iou:.3f} after {self.steps_done} steps, never higher at "
                f"any of {len(self.evaluations) - 1} checks. The starting weights are "
                f"kept{saved}. Try a lower learning rate, fewer steps or more labelled objects."
            )
        return (
            f"Single-click IoU on the {self.held_out_objects} held-out objects: "
            f"{self.before_iou:.3f} before, {self.after_iou:.3f} after: the best weights, "
            f"from step {self.best_step} of {self.steps_done} (last step "
            f"{self.final_iou:.3f}), are kept{saved}."
        )


# -- examples ----------------------------------------------------------------------------
def _as_item(pair: Pair) -> LabelledImage:
    if isinstance(pair, LabelledImage):
        return pair
    image, labels = pair
    labels = np.asarray(labels)
    check_labels(labels)
    return LabelledImage(np.asarray(image), [labels.astype(np.int64, copy=False)])


def split_holdout(
    items: Sequence[LabelledImage], holdout: float = 0.2, seed: int = 0
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(training items, held-out items): `round(holdout * n)` of the n objects of the
    first level (at least 1 and at most n - 1 when 0 < holdout and n >= 2), drawn with
    `seed` from all items together. Held-out objects, and finer-level objects inside them,
    are zeroed in the training labels; the held-out labels hold only them."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must lie in [0, 1), got {holdout}.")
    objects = [
        (index, int(object_id))
        for index, item in enumerate(items)
        for object_id in np.unique(item.levels[0])
        if object_id != 0
    ]
    count = round(holdout * len(objects))
    if holdout > 0 and len(objects) >= 2:
        count = min(max(count, 1), len(objects) - 1)
    order = np.random.default_rng(seed).permutation(len(objects))
    held: dict[int, list[int]] = {}
    for k in order[:count]:
        index, object_id = objects[k]
        held.setdefault(index, []).append(object_id)
    training, held_out = [], []
    for index, item in enumerate(items):
        ids = held.get(index, [])
        inside = np.isin(item.levels[0], ids)
        kept = [np.where(inside, 0, level) for level in item.levels]
        if np.any(kept[0]):
            training.append(LabelledImage(item.image, kept))
        if ids:
            only = [np.where(inside, level, 0) for level in item.levels]
            held_out.append(LabelledImage(item.image, only))
    return training, held_out


def _count_objects(items: Iterable[LabelledImage]) -> int:
    return sum(int(np.count_nonzero(np.unique(item.levels[0]))) for item in items)


# -- checkpoints -------------------------------------------------------------------------
def save_finetuned(model: Sam, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write `model` as a plain SAM state_dict plus its `config` (so `load_model(path)`
    rebuilds it without being told the architecture) and optional plain-data metadata.
    Written to a temporary file first, then renamed: never a half-written checkpoint."""
    if model.config is None:
        raise ValueError("The model has no config to store; build it with build_sam(config).")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    state["config"] = model.config.to_dict()
    if metadata:
        state[METADATA_KEY] = metadata
    temporary = path.with_name(path.name + ".partial")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


_lock = threading.Lock()
_finetuned: dict[str, Path] = {}


def register_finetuned(path: str | os.PathLike, name: str | None = None) -> str:
    """List a fine-tuned checkpoint as a model choice (in this Python session): the
    "Segment Anything" widget offers it. Returns the name it is listed under (the file's
    stem by default, made unique with a number where another file has it)."""
    path = Path(path).expanduser().resolve()
    base = name or path.stem
    with _lock:
        names = itertools.chain([base], (f"{base}-{i}" for i in itertools.count(2)))
        for candidate in names:
            if _finetuned.get(candidate, path) == path:
                _finetuned[candidate] = path
                return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def unregister_finetuned(name: str) -> None:
    with _lock:
        _finetuned.pop(name, None)


def finetuned_models() -> dict[str, Path]:
    """The registered fine-tuned checkpoints, by name, in the order they were added."""
    with _lock:
        return dict(_finetuned)


# -- the run -------------------------------------------------------------------------------
def default_config(steps: int, decoder_only: bool, seed: int = 0) -> TrainingConfig:
    """Settings for fine-tuning a pretrained model: a modest learning rate (higher when
    only the small decoder trains), one correction round, a short warm-up."""
    return TrainingConfig(
        steps=steps,
        batch_size=2,
        objects_per_image=8,
        correction_rounds=1,
        box_fraction=0.3,
        learning_rate=3e-4 if decoder_only else 3e-5,
        warmup_steps=max(1, min(20, steps // 10)),
        freeze_encoder=decoder_only,
        scale_range=(0.5, 2.0),
        seed=seed,
    )


def default_eval_every(steps: int) -> int:
    """Steps between held-out checks: about ten per run (plus the start and the end)."""
    return max(1, math.ceil(steps / 10))


def _console_bar(steps: int):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="fine-tune", unit="step", dynamic_ncols=True)


def finetune(
    model: Sam,
    pairs: Sequence[Pair],
    steps: int = 100,
    decoder_only: bool = True,
    out_path: str | os.PathLike | None = None,
    progress: Progress | bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    *,
    eval_every: int | None = None,
    learning_rate: float | None = None,
    config: TrainingConfig | None = None,
    register: bool = True,
    metadata: dict | None = None,
    warn: bool = True,
) -> FinetuneResult:
    """Fine-tune `model` in place on 2D (image, instance labels) pairs (or
    `LabelledImage`s; see `labelled_slices` for nD data) and keep the weights that click
    best on held-out objects (see `split_holdout`).

    - images: (H, W) or (H, W, C) with C in 1, 3, 4, any real dtype; labels: (H, W)
      integer ids, 0 = background, one id per object. Other inputs raise ValueError.
    - `decoder_only`: train the prompt encoder and mask decoder only (fast, even on a
      CPU); else everything (the model is converted to float32 first).
    - Single-click IoU on the held-out objects is measured at the start (step 0), every
      `eval_every` steps (default: about 10 checks, `default_eval_every`) and at the
      end; the best weights are restored into `model` at the end (the starting ones when
      nothing beat them: then a `FinetuneWarning`, as when nothing was held out).
    - `progress`: None or True for a console progress bar, False for none, or a
      callable `progress(step, steps, stats)` called after every step (`stats` holds
      `loss`, and `held_out_iou` after a check). `should_stop()` is polled between
      steps: a cancelled run stops there, keeps the best weights checked so far, writes
      nothing and reports `cancelled`.
    - `out_path`: where to save the checkpoint (see `save_finetuned`); `register` lists it
      as a model choice of the widget (`finetuned_models`).
    - `learning_rate`: overrides the default (3e-4 decoder-only, 3e-5 full).
    - `config`: full control over the training settings (`steps`, `decoder_only` and
      `seed` then come from it). `warn=False`: no `FinetuneWarning`, for callers that
      report `result.improved` themselves.
    """
    items = [_as_item(pair) for pair in pairs]
    if not items:
        raise ValueError("No training data: give at least one (image, labels) pair.")
    config = config or default_config(steps, decoder_only, seed)
    if learning_rate is not None:
        config = dataclasses.replace(config, learning_rate=learning_rate)
    if config.steps < 1:
        raise ValueError(f"Fine-tuning needs at least 1 step, got {config.steps}.")
    every = default_eval_every(config.steps) if eval_every is None else int(eval_every)
    if every < 1:
        raise ValueError(f"eval_every must be at least 1 step, got {eval_every}.")
    training, held_out = split_holdout(items, holdout, config.seed)
    if not training:
        raise ValueError(
            "The labels hold no objects to train on: annotate some objects (non-zero "
            "labels) first, or hold out fewer."
        )
    hide_triton_if_llvm_is_loaded()  # training imports torch._dynamo (see _llvm_guard)
    if not config.freeze_encoder:
        model.float()  # AdamW on bfloat16 weights would lose small updates
    model.eval()
    score = HeldOutScore(model, held_out, config.seed, frozen_encoder=config.freeze_encoder)
    best = BestWeights(trainable_parameters(model, config.freeze_encoder))
    bar = _console_bar(config.steps) if progress is None or progress is True else None
    callback = progress if callable(progress) else None

    def after_step(step: int, total: int, stats: dict) -> None:
        if score.clicks and (step % every == 0 or step == total):
            stats["held_out_iou"] = score()
            best.offer(step, stats["held_out_iou"])
        if bar is not None:
            shown = f"loss {stats['loss']:.3f}"
            if score.clicks:
                shown += f", held-out IoU best {best.iou:.3f} (step {best.step})"
            bar.set_postfix_str(shown, refresh=False)
            bar.update(step - bar.n)
        if callback is not None:
            callback(step, total, stats)

    try:
        if score.clicks:
            best.offer(0, score())
        history = train(model, from_pairs(training), config, after_step, should_stop)
    finally:
        if bar is not None:
            bar.close()
    done = history[-1]["step"] if history else 0
    last = best.evaluations[-1] if best.evaluations else (0, float("nan"))
    if score.clicks and best.step != done:
        best.restore()
    result = FinetuneResult(
        before_iou=best.evaluations[0][1] if best.evaluations else float("nan"),
        after_iou=best.iou,
        path=None,
        steps_done=done,
        steps=config.steps,
        cancelled=done < config.steps,
        training_objects=_count_objects(training),
        held_out_objects=_count_objects(held_out),
        history=history,
        best_step=best.step if score.clicks else done,
        improved=best.step > 0 if score.clicks else None,
        final_iou=last[1] if last[0] == done else float("nan"),
        evaluations=best.evaluations,
    )
    if result.cancelled:
        return result
    if out_path is not None:
        result.path = save_finetuned(model, out_path, _metadata(result, config, holdout, metadata))
        if register:
            register_finetuned(result.path)
    if warn and result.improved is not True:
        warnings.warn(result.summary(), FinetuneWarning, stacklevel=2)
    return result


def _metadata(result: FinetuneResult, config: TrainingConfig, holdout: float, extra) -> dict:
    return {
        "steps": config.steps,
        "decoder_only": bool(config.freeze_encoder),
        "holdout": float(holdout),
        "seed": int(config.seed),
        "before_iou": _plain(result.before_iou),
        "after_iou": _plain(result.after_iou),
        "final_iou": _plain(result.final_iou),
        "best_step": result.best_step,
        "improved": result.improved,
        "training_objects": result.training_objects,
        "held_out_objects": result.held_out_objects,
        **(extra or {}),
    }


def _plain(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
