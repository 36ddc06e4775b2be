"""The 2D view of an nD image that SAM sees, and where a 2D mask lands in nD labels.

Pure numpy: a napari layer's data, the axes on screen and the current slice come in, a
2D (H, W) or (H, W, C) array goes out. "Axes" here are the layer's own data axes; for an
RGB(A) layer the colour axis is the last data axis and is not counted among them.

>>> view = extract_view(stack, displayed=(1, 2), slice_index={0: 12})  # stack[12]
>>> indices = mask_indices(mask, displayed=(1, 2), slice_index={0: 12}, ndim=3)
>>> labels[indices] = 7                                        # writes into slice 12
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ViewSpec", "extract_view", "mask_indices", "slice_key"]


class ViewSpec:
    """Which 2D view of a layer to take: the two displayed axes (rows, cols) and the
    index of every other (sliced) axis. Hashable, so it can be part of a cache key."""

    __slots__ = ("displayed", "slice_index")

    def __init__(self, displayed: Sequence[int], slice_index: Mapping[int, int]) -> None:
        displayed = tuple(int(axis) for axis in displayed)
        if len(displayed) != 2 or displayed[0] == displayed[1]:
            raise ValueError(f"Need two different displayed axes, got {displayed}.")
        index = {int(axis): int(value) for axis, value in slice_index.items()}
        if set(index) & set(displayed):
            raise ValueError("An axis cannot be both displayed and sliced.")
        self.displayed = displayed
        self.slice_index = dict(sorted(index.items()))

    def key(self) -> tuple:
        return (self.displayed, tuple(self.slice_index.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ViewSpec) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"ViewSpec(displayed={self.displayed}, slice_index={self.slice_index})"


def slice_key(displayed: Sequence[int], slice_index: Mapping[int, int]) -> tuple:
    """A hashable key naming one 2D view of a layer."""
    return ViewSpec(displayed, slice_index).key()


def _check_axes(ndim: int, displayed: tuple[int, int], slice_index: Mapping[int, int]) -> None:
    missing = set(range(ndim)) - set(displayed) - set(slice_index)
    extra = (set(displayed) | set(slice_index)) - set(range(ndim))
    if missing or extra:
        raise ValueError(
            f"A {ndim}D layer needs exactly one index for every axis that is not displayed; "
            f"displayed={displayed}, sliced={sorted(slice_index)}."
        )


def extract_view(
    data,
    displayed: Sequence[int],
    slice_index: Mapping[int, int] | None = None,
    *,
    rgb: bool = False,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
) -> np.ndarray:
    """The 2D image on screen, as a numpy array (H, W) or (H, W, C).

    - `data`: any array-like napari accepts (numpy, dask, zarr: only the slice is read).
    - `displayed`: the (row, col) data axes as shown on screen (a transposed display
      gives (1, 0)).
    - `slice_index`: {axis: index} for every other spatial axis.
    - `rgb`: the last data axis holds the colour (RGB or RGBA); it is kept.
    - `channel_axis`/`channels`: a data axis of channels that napari shows as one more
      slider; the view is built from the chosen channels (1 -> gray, 3 -> RGB), and that
      axis needs no entry in `slice_index`.
    """
    spec = ViewSpec(displayed, slice_index or {})
    shape = tuple(data.shape)
    spatial_ndim = len(shape) - (1 if rgb else 0)
    slice_index = dict(spec.slice_index)
    if channel_axis is not None:
        if rgb:
            raise ValueError("An RGB layer has no separate channel axis.")
        channel_axis = channel_axis % spatial_ndim
        if channel_axis in spec.displayed:
            raise ValueError("The channel axis cannot be one of the displayed axes.")
        slice_index.pop(channel_axis, None)
        picked = list(range(shape[channel_axis]) if channels is None else channels)
        if len(picked) not in (1, 3):
            raise ValueError(
                f"Pick 1 channel (gray) or 3 channels (RGB) to form the view; got {picked}."
            )
        if any(not 0 <= c < shape[channel_axis] for c in picked):
            raise ValueError(
                f"Channels {picked} lie outside the {shape[channel_axis]} channels of axis "
                f"{channel_axis}."
            )
        _check_axes(spatial_ndim, spec.displayed, {**slice_index, channel_axis: 0})
    else:
        _check_axes(spatial_ndim, spec.displayed, slice_index)
        picked = None

    for axis, index in slice_index.items():
        if not 0 <= index < shape[axis]:
            raise IndexError(f"Slice {index} lies outside axis {axis} of length {shape[axis]}.")

    # Index the sliced axes first, so lazy arrays only read one plane.
    key: list = [slice(None)] * len(shape)
    for axis, index in slice_index.items():
        key[axis] = index
    if picked is not None:
        key[channel_axis] = picked
    plane = np.asarray(data[tuple(key)])

    # Remaining axes, in order: the displayed ones, maybe the channel axis, maybe rgb.
    remaining = [a for a in range(spatial_ndim) if a not in slice_index]
    order = [remaining.index(spec.displayed[0]), remaining.index(spec.displayed[1])]
    if picked is not None:
        order.append(remaining.index(channel_axis))
    if rgb:
        order.append(len(remaining))
    view = np.transpose(plane, order)
    if picked is not None and len(picked) == 1:
        view = view[..., 0]
    return np.ascontiguousarray(view)


def mask_indices(
    mask: np.ndarray,
    displayed: Sequence[int],
    slice_index: Mapping[int, int] | None,
    ndim: int,
) -> tuple[np.ndarray, ...]:
    """Fancy indices into an `ndim`-D labels array for the True pixels of a 2D mask
    that shows the view (`displayed`, `slice_index`): the inverse of `extract_view`."""
    spec = ViewSpec(displayed, slice_index or {})
    _check_axes(ndim, spec.displayed, spec.slice_index)
    rows, cols = np.nonzero(np.asarray(mask, dtype=bool))
    indices: list[np.ndarray] = [np.empty(0, np.intp)] * ndim
    indices[spec.displayed[0]] = rows
    indices[spec.displayed[1]] = cols
    for axis, index in spec.slice_index.items():
        indices[axis] = np.full(rows.shape, index, dtype=np.intp)
    return tuple(indices)
