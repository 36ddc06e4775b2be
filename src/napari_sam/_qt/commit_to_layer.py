"""A session's commit written into a napari Labels layer: through the layer's undoable
edit path, landing under the object in world space, or refused before writing."""

from __future__ import annotations

from collections.abc import Callable

from ..interactive.commit import CommitError, unwritable_reason
from ._base import UserError
from ._layers import data_to_world, describe_frame
from ._messages import notify

__all__ = ["NEW_LAYER", "commit_to_layer"]

NEW_LAYER = "(new labels layer)"


def commit_to_layer(session, image, existing, make_output: Callable, overwrite: bool,
                    world_point) -> list[int]:  # fmt: skip
    """Write `session`'s mask(s) into the Labels layer `existing` (None: `make_output()`
    makes one) as one undoable step, resampled from `image`'s frame into the layer's.
    Returns the new ids. Raises UserError, having written nothing, for layers that
    cannot be edited in place, ids beyond the dtype, or frames tilted against each other.
    """
    reason = None if existing is None else unwritable_reason(existing.data, existing.multiscale)
    if reason is not None:
        raise UserError(
            f"The output layer {existing.name!r} {reason}. Choose {NEW_LAYER} as Output, "
            "or load it into memory first: layer.data = np.array(layer.data) (for a "
            "pyramid, layer.data[0])."
        )
    layer = make_output()
    try:
        plan = session.plan_commit(
            layer.data, overwrite, image_to_world=data_to_world(image),
            labels_to_world=data_to_world(layer), world_point=world_point,
        )  # fmt: skip
    except CommitError as error:
        frames = f"image {describe_frame(image)}; output {describe_frame(layer)}"
        raise UserError(f"{error} ({frames})") from None
    with layer.block_history():
        for indices, label_id in plan.writes:
            layer.data_setitem(indices, label_id)
    if plan.ids:
        layer.selected_label = plan.ids[-1]
        return plan.ids
    if plan.outside:
        why = (f"lies outside the output layer {layer.name!r} (choose another under "
               "Output, or a new labels layer)")
    elif not any(mask.any() for mask in session.commit_masks()):
        why = "is empty"
    else:
        why = "lies entirely on existing labels (tick 'overwrite' to replace them)"
    notify(f"Segment Anything: the mask {why}; nothing written.", "warning")
    return []
