"""Build `real_check.npz`: hand-checked instance labels for two real images bundled with
scikit-image (no download): `skimage.data.immunohistochemistry()` (512 x 512 x 3 uint8,
IHC tissue, blue hematoxylin nuclei, brown DAB) and `skimage.data.coins()` (303 x 384 uint8,
24 coins on a dark, unevenly lit background).

Output keys: `ihc_labels` (512, 512) and `coins_labels` (303, 384), int32 instance label
images indexed (row, col) like the image pixels; 0 is background, 1..N one id per object.
The images themselves are not stored: `benchmarks/real_check.py` loads them from
skimage.data at run time.

Method, IHC nuclei:
  1. colour deconvolution, `skimage.color.rgb2hed` (Ruifrok & Johnston, "Quantification of
     histochemical staining by color deconvolution", Anal. Quant. Cytol. Histol. 2001);
     hematoxylin channel, Gaussian smoothing (sigma 1 px);
  2. fixed threshold (0.03 optical density; Otsu's 0.024 lets in the haze of the tissue),
     hole filling, binary opening with a disk of radius 1;
  3. touching nuclei split by a seeded watershed: seeds are the h-maxima (h = 0.5 px) of the
     smoothed Euclidean distance transform of the mask, the watershed floods its negative
     within the mask (Beucher & Meyer 1993);
  4. removal of objects touching the image border and of objects of 30 px or fewer;
  5. removal of nuclei inside the DAB-stained epithelium, where the hematoxylin/DAB
     separation is unreliable and the nuclei overlap: an object is dropped when the mean
     smoothed DAB (sigma 1) in a 3 px ring around it exceeds 0.025 (ring means fall in
     two clear groups here: <= 0.019 in the pale stroma, >= 0.028 next to brown
     epithelium). What remains is stromal (spindle/oval) nuclei;
  6. the candidates were then looked at one by one (outline over the image, 4x zoom) and
     every object that is not clearly one whole nucleus with a tight outline (merged
     nuclei, fragments, faint or ambiguous blobs) is dropped: `IHC_DROP` below lists them
     by a pixel inside each, with the reason (60 of the 101 candidates; 41 kept).
     The IHC labelling is therefore partial: epithelial, faint, merged and overlapping
     nuclei are real nuclei left unlabelled, not background.

Method, coins:
  1. Gaussian smoothing (sigma 1), Sobel gradient magnitude as the relief;
  2. markers: background where the smoothed image is < 30, coin where it is > 150; a
     marker-based watershed on the Sobel relief (as in the scikit-image region-based
     segmentation example) gives the coin mask;
  3. hole filling, binary opening (disk radius 2), connected-component labelling,
     removal of components touching the border and of components of 200 px or fewer.
     No coins touch each other in this image; all 24 are separate components;
  4. hand check as above: `COINS_DROP` (empty: all 24 outlines follow the coin rims).

Run: `python benchmarks/data/make_real_check.py` (a few seconds); it writes the npz next to
itself. It fails when the automatic steps no longer give the candidates that were checked
(their count differs, or a listed exclusion point falls on background or two points share one
object), e.g. after a scikit-image change; then re-check the overlays before updating lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import color, data, filters, measure, morphology, segmentation

OUT = Path(__file__).resolve().parent / "real_check.npz"

# (row, col) of a pixel inside each automatic IHC candidate that is dropped, with the reason
# (judged on 4x-6x zoomed outlines; 60 of the 101 candidates).
IHC_DROP: list[tuple[int, int, str]] = [
    (21, 463, "faint, ambiguous blob"),
    (37, 483, "upper half of one nucleus split in two"),
    (47, 484, "lower half of one nucleus split in two"),
    (50, 444, "faint, ambiguous blob"),
    (66, 456, "faint, ambiguous blob"),
    (79, 506, "outline inside a grey nucleus, not tight"),
    (186, 497, "long streak, not one clear nucleus"),
    (229, 485, "long streak, not one clear nucleus"),
    (239, 272, "faint, ambiguous blob"),
    (244, 116, "nucleus with an attached tail"),
    (249, 497, "faint, ambiguous blob"),
    (251, 107, "merged nuclei"),
    (253, 298, "merged nuclei"),
    (254, 268, "fragment"),
    (258, 221, "merged nuclei"),
    (260, 145, "faint, ambiguous blob"),
    (271, 268, "nucleus plus a bump from its neighbour"),
    (271, 490, "faint, ambiguous blob"),
    (273, 244, "merged nuclei"),
    (278, 188, "faint, ambiguous blob"),
    (279, 295, "merged nuclei"),
    (286, 231, "merged nuclei"),
    (289, 490, "faint, ambiguous blob"),
    (291, 255, "faint, ambiguous blob"),
    (294, 335, "faint, ambiguous blob"),
    (298, 228, "merged nuclei"),
    (301, 322, "faint, ambiguous blob"),
    (306, 135, "merged nuclei"),
    (320, 434, "merged nuclei"),
    (324, 163, "faint, ambiguous blob"),
    (333, 204, "faint, ambiguous blob"),
    (340, 376, "merged nuclei"),
    (346, 405, "long streak, not one clear nucleus"),
    (350, 463, "irregular, not one nucleus"),
    (363, 447, "fragment"),
    (365, 390, "odd three-armed shape, maybe two nuclei"),
    (366, 491, "merged nuclei"),
    (370, 421, "merged nuclei"),
    (375, 463, "long pale streak"),
    (378, 443, "pale, boundary unclear"),
    (401, 238, "merged or overlapping nuclei"),
    (406, 178, "pale irregular blob"),
    (408, 425, "faint, ambiguous blob"),
    (418, 483, "merged or overlapping nuclei"),
    (421, 499, "faint, ambiguous blob"),
    (425, 213, "merged nuclei"),
    (446, 179, "faint, ambiguous blob"),
    (452, 169, "faint, ambiguous blob"),
    (453, 196, "pale, boundary unclear"),
    (455, 271, "pale region beside epithelium"),
    (463, 181, "pale, outline looser than the nucleus"),
    (463, 475, "faint, ambiguous blob"),
    (465, 500, "large pale, boundary unclear"),
    (474, 208, "small pale blob"),
    (472, 473, "faint, ambiguous blob"),
    (480, 277, "faint, ambiguous blob"),
    (492, 241, "merged nuclei"),
    (494, 212, "faint, ambiguous blob"),
    (494, 439, "grey debris, not a nucleus"),
    (497, 417, "crescent shape, ambiguous"),
]

# Number of automatic candidates the hand check was made on (a guard against drift).
EXPECTED_CANDIDATES = {"ihc_labels": 101, "coins_labels": 24}

# (row, col) of a pixel inside each automatic coin candidate that is dropped (none needed).
COINS_DROP: list[tuple[int, int, str]] = []


def ihc_candidates(image: np.ndarray) -> np.ndarray:
    """Automatic nucleus candidates (steps 1-5 of the module docstring).

    image: (H, W, 3) uint8 RGB. Returns (H, W) int32 labels, 0 background.
    """
    hed = color.rgb2hed(image)
    hema = filters.gaussian(hed[..., 0], sigma=1.0)
    mask = ndi.binary_fill_holes(hema > 0.03)
    mask = morphology.opening(mask, morphology.disk(1))
    dist = filters.gaussian(ndi.distance_transform_edt(mask), sigma=1.0)
    seeds = measure.label(morphology.h_maxima(dist, 0.5))
    labels = segmentation.watershed(-dist, seeds, mask=mask)
    labels = segmentation.clear_border(labels)
    labels = morphology.remove_small_objects(labels, max_size=30)

    dab = filters.gaussian(hed[..., 2], sigma=1.0)
    ring = segmentation.expand_labels(labels, distance=3)
    ring[labels > 0] = 0
    ids = np.arange(labels.max() + 1)
    counts = np.bincount(ring.ravel(), minlength=ids.size)
    sums = np.bincount(ring.ravel(), weights=dab.ravel(), minlength=ids.size)
    ring_dab = sums / np.maximum(counts, 1)
    in_epithelium = ring_dab > 0.025
    in_epithelium[0] = False
    labels[in_epithelium[labels]] = 0
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


def coin_candidates(image: np.ndarray) -> np.ndarray:
    """Automatic coin candidates (steps 1-3 of the module docstring).

    image: (H, W) uint8 grey. Returns (H, W) int32 labels, 0 background.
    """
    smooth = filters.gaussian(image, sigma=1.0, preserve_range=True)
    relief = filters.sobel(smooth)
    markers = np.zeros(image.shape, np.int32)
    markers[smooth < 30] = 1
    markers[smooth > 150] = 2
    mask = segmentation.watershed(relief, markers) == 2
    mask = morphology.opening(ndi.binary_fill_holes(mask), morphology.disk(2))
    labels = segmentation.clear_border(measure.label(mask))
    labels = morphology.remove_small_objects(labels, max_size=200)
    return segmentation.relabel_sequential(labels)[0].astype(np.int32)


def drop_listed(labels: np.ndarray, drops: list[tuple[int, int, str]]) -> np.ndarray:
    """Remove the object under each (row, col) of `drops`, renumber 1..N (int32).

    Raises ValueError when a point is on background or two points hit one object, so the
    list stays in step with the automatic candidates.
    """
    hit = [int(labels[row, col]) for row, col, _ in drops]
    if 0 in hit:
        bad = [drops[i][:2] for i, v in enumerate(hit) if v == 0]
        raise ValueError(f"exclusion points on background: {bad}")
    if len(set(hit)) != len(hit):
        raise ValueError("two exclusion points fall in one object")
    out = labels.copy()
    out[np.isin(out, hit)] = 0
    return segmentation.relabel_sequential(out)[0].astype(np.int32)


def build() -> dict[str, np.ndarray]:
    """The two hand-checked label images, keyed as in the npz.

    Raises RuntimeError when the automatic candidates are not the ones that were checked.
    """
    candidates = {
        "ihc_labels": (ihc_candidates(data.immunohistochemistry()), IHC_DROP),
        "coins_labels": (coin_candidates(data.coins()), COINS_DROP),
    }
    out = {}
    for key, (labels, drops) in candidates.items():
        if labels.max() != EXPECTED_CANDIDATES[key]:
            raise RuntimeError(
                f"{key}: {labels.max()} candidates, the hand check was made on "
                f"{EXPECTED_CANDIDATES[key]}; re-check the overlays"
            )
        out[key] = drop_listed(labels, drops)
    return out


def main() -> None:
    arrays = build()
    np.savez_compressed(OUT, **arrays)
    for key, labels in arrays.items():
        areas = np.bincount(labels.ravel())[1:]
        print(f"{key}: {labels.max()} objects, median area {np.median(areas):.0f} px")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
