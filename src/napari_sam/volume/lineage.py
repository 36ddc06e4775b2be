"""The lineage of tracked objects: which label each object got, which label it divided
from, and the frames it spans; as columns (for a napari Labels layer's `features`) and as
CSV (stdlib `csv`: a dependency-free format every tracking tool reads).

>>> table = lineage_table(propagation.objects, {0: 1, 1: 2, 2: 3})   # object -> label id
>>> table["parent"]                     # array([0, 1, 1]): objects 1 and 2 divided from 1
>>> write_lineage_csv("lineage.csv", table)
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["LINEAGE_COLUMNS", "lineage_table", "merge_lineage", "write_lineage_csv"]

# label: the object's id; parent: the id it divided from (0: none); first/last: the
# frames (indices along the propagation axis) where it is present.
LINEAGE_COLUMNS = ("label", "parent", "first_frame", "last_frame")


def lineage_table(objects: Sequence, ids: Mapping[int, int]) -> dict[str, np.ndarray]:
    """One row per object that got a label id: `objects` are `VolumeObject`s (their
    `parent` is the number of another object), `ids` maps object number -> label id.
    Returns {column: (N,) int64 array} with the columns of `LINEAGE_COLUMNS`; a parent
    that got no id is 0."""
    rows = []
    for number, label in ids.items():
        obj = objects[number]
        parent = 0 if obj.parent is None else int(ids.get(obj.parent, 0))
        slices = obj.slices
        rows.append((int(label), parent, slices[0] if slices else -1,
                     slices[-1] if slices else -1))  # fmt: skip
    columns = np.array(rows, dtype=np.int64).reshape(-1, len(LINEAGE_COLUMNS))
    return {name: columns[:, i] for i, name in enumerate(LINEAGE_COLUMNS)}


def merge_lineage(old: Mapping[str, np.ndarray] | None, new: Mapping[str, np.ndarray]):
    """`old` rows whose label is not in `new`, then `new`'s rows, sorted by label."""
    if old is None or not len(old.get("label", ())):
        return {name: np.asarray(new[name], np.int64) for name in LINEAGE_COLUMNS}
    keep = ~np.isin(old["label"], new["label"])
    merged = {name: np.concatenate([np.asarray(old[name])[keep], new[name]]).astype(np.int64)
              for name in LINEAGE_COLUMNS}  # fmt: skip
    order = np.argsort(merged["label"], kind="stable")
    return {name: values[order] for name, values in merged.items()}


def write_lineage_csv(path, table: Mapping[str, np.ndarray], overwrite: bool = False) -> Path:
    """Write the lineage table as CSV with a header row. Raises FileExistsError for an
    existing file unless `overwrite` (nothing the user made is replaced silently)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another file or pass overwrite=True.")
    missing = [name for name in LINEAGE_COLUMNS if name not in table]
    if missing:
        raise ValueError(f"The table lacks the columns {missing}.")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LINEAGE_COLUMNS)
        writer.writerows(zip(*(np.asarray(table[n]).tolist() for n in LINEAGE_COLUMNS),
                             strict=True))  # fmt: skip
    return path
