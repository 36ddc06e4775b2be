"""A small check set of real images with instance labels: IHC nuclei and coins.

The images come from scikit-image's bundled data (no download):
`skimage.data.immunohistochemistry()` (512 x 512 x 3 uint8 RGB, hematoxylin/DAB-stained
colon tissue) and `skimage.data.coins()` (303 x 384 uint8 grey). The labels are read from
`data/real_check.npz` next to this file, written by `data/make_real_check.py`.

How the labels were made: for the IHC image, colour deconvolution (`skimage.color.rgb2hed`,
Ruifrok & Johnston 2001) gives the hematoxylin channel, which is smoothed, thresholded,
hole-filled and split into nuclei by a watershed seeded at the maxima of the distance
transform; border, tiny and DAB-surrounded (epithelial) objects are removed automatically,
leaving stromal nuclei, and each remaining candidate was then judged by eye on zoomed
outlines, keeping only those that are clearly one whole nucleus with a tight outline (41 of
101). For the coins, a marker-controlled watershed on the Sobel gradient gives the coin mask,
hole-filled and labelled by connected components; all 24 coins passed the same visual check.
Details and the list of hand-dropped objects are in `data/make_real_check.py`.

This set is small and machine-made-then-hand-checked, not expert ground truth. The coin
labels are complete (every coin is labelled). The IHC labels are NOT complete: many real
nuclei (all epithelial ones, faint, merged or overlapping stromal ones) are left unlabelled
and are not background, so use the IHC labels only for per-object measures (e.g. prompt one
labelled nucleus, compare the mask with its label), not for counting false positives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NPZ = Path(__file__).resolve().parent / "data" / "real_check.npz"


def load_real_check() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The check set as (name, image, labels) triples, in this order:

    - "ihc_nuclei": image (512, 512, 3) uint8 RGB, labels (512, 512) int32, 41 nuclei
      (partial labelling, see the module docstring);
    - "coins": image (303, 384) uint8 grey, labels (303, 384) int32, 24 coins (complete).

    Labels are indexed (row, col) like the image pixels; 0 is background (or, for IHC,
    unlabelled), 1..N one id per object.
    """
    from skimage import data

    with np.load(NPZ) as arrays:
        ihc = arrays["ihc_labels"].astype(np.int32)
        coins = arrays["coins_labels"].astype(np.int32)
    return [
        ("ihc_nuclei", data.immunohistochemistry(), ihc),
        ("coins", data.coins(), coins),
    ]
