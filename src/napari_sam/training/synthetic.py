"""Synthetic microscopy with a three-level truth: cells hold a nucleus, nuclei hold 0-3
nucleoli. One click on a nucleolus therefore has three correct readings (cell, nucleus,
nucleolus), which is what teaches a model SAM's whole / part / subpart outputs.

Everything a microscope varies is drawn at random per image: object size (about 8 to
200 px across), density from sparse to crowded and touching, shapes, textures, uneven
illumination, contrast, Poisson and Gaussian noise, blur, fluorescence (dark background)
or brightfield / phase-like rendering (halos, low interior contrast), 8 or 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .data import LabelledImage


@dataclass
class SyntheticSample:
    image: np.ndarray  # (H, W) uint8 or uint16
    cells: np.ndarray  # (H, W) int32 instance ids, 0 = background
    nuclei: np.ndarray  # (H, W) int32; a nucleus carries the id of its cell
    nucleoli: np.ndarray  # (H, W) int32 instance ids (own numbering)
    nucleolus_cell: dict[int, int]  # nucleolus id -> id of the cell (and nucleus) holding it

    def levels_at(self, row: int, col: int) -> list[np.ndarray]:
        """The true masks containing a pixel, from whole to subpart (1 to 3 of them)."""
        masks = []
        for labels in (self.cells, self.nuclei, self.nucleoli):
            value = labels[row, col]
            if value:
                masks.append(labels == value)
        return masks


def _radial_shape(
    rng: np.random.Generator, size: int, radius: float, irregularity: float
) -> np.ndarray:
    """rho(y, x) on a size x size patch centred on the shape: < 1 inside a blob whose
    radius wobbles with a few random harmonics of the angle."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - centre
    angle = np.arctan2(yy, xx)
    wobble = np.ones_like(angle)
    for harmonic in range(2, 6):
        amplitude = irregularity * rng.uniform(0, 1) / harmonic
        wobble += amplitude * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    elongation = 1 + irregularity * rng.uniform(0, 1.2)
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    distance = np.hypot(along / elongation, across)
    return distance / (radius * np.clip(wobble, 0.5, None))


def _paste_min(target: np.ndarray, patch: np.ndarray, top: int, left: int) -> tuple:
    """Region of `target` covered by `patch` at (top, left), clipped to the image."""
    height, width = target.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + patch.shape[0], height), min(left + patch.shape[1], width)
    if t0 >= t1 or l0 >= l1:
        return None
    return (slice(t0, t1), slice(l0, l1)), (slice(t0 - top, t1 - top), slice(l0 - left, l1 - left))


def _layout(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> np.ndarray:
    """Cell centres: Poisson-disc-like sampling whose spacing sets the density."""
    height, width = shape
    crowding = rng.uniform(0.55, 2.5)  # spacing in radii: < 2 makes cells touch
    spacing = crowding * radius
    area_per_cell = spacing**2 * 0.9
    target = int(np.clip(height * width / area_per_cell * rng.uniform(0.3, 1.0), 1, 400))
    centres: list[tuple[float, float]] = []
    for _ in range(target * 6):
        if len(centres) >= target:
            break
        point = (
            rng.uniform(-radius / 2, height + radius / 2),
            rng.uniform(-radius / 2, width + radius / 2),
        )
        if all((point[0] - c[0]) ** 2 + (point[1] - c[1]) ** 2 >= spacing**2 for c in centres):
            centres.append(point)
    return np.array(centres).reshape(-1, 2)


def _objects(rng: np.random.Generator, shape: tuple[int, int]):
    """Instance maps of cells, nuclei and nucleoli."""
    height, width = shape
    radius = float(np.exp(rng.uniform(np.log(4), np.log(min(100, max(height, width) / 2.5)))))
    rho_cell = np.full(shape, np.inf)
    cells = np.zeros(shape, np.int32)
    nuclei = np.zeros(shape, np.int32)
    nucleoli = np.zeros(shape, np.int32)
    nucleolus_cell: dict[int, int] = {}
    irregularity = rng.uniform(0.05, 0.6)
    for cell_id, (cy, cx) in enumerate(_layout(rng, shape, radius), start=1):
        r = radius * rng.uniform(0.75, 1.3)
        size = int(2 * r * 2.2) | 1
        top, left = int(np.round(cy)) - size // 2, int(np.round(cx)) - size // 2
        rho = _radial_shape(rng, size, r, irregularity)
        region = _paste_min(cells, rho, top, left)
        if region is None:
            continue
        (img_sl, patch_sl) = region
        rho = rho[patch_sl]
        # Touching cells split where their normalised radii meet, like a cell wall.
        wins = (rho < 1) & (rho < rho_cell[img_sl])
        if wins.sum() < 6:
            continue
        rho_cell[img_sl][wins] = rho[wins]
        cells[img_sl][wins] = cell_id

        # nucleus: off-centre, 30-60 % of the cell, inside it
        nr = r * rng.uniform(0.3, 0.6)
        if nr < 2.5:
            continue
        offset = (r - nr) * 0.4 * rng.uniform(-1, 1, 2)
        nsize = int(2 * nr * 2.2) | 1
        ntop = int(np.round(cy + offset[0])) - nsize // 2
        nleft = int(np.round(cx + offset[1])) - nsize // 2
        nrho = _radial_shape(rng, nsize, nr, irregularity * 0.5)
        nregion = _paste_min(cells, nrho, ntop, nleft)
        if nregion is None:
            continue
        n_img, n_patch = nregion
        inside = (nrho[n_patch] < 1) & (cells[n_img] == cell_id)
        nuclei[n_img][inside] = cell_id

        # nucleoli: 0-3 small blobs inside the nucleus
        count = rng.integers(0, 4) if nr >= 5 else 0
        for _ in range(count):
            lr = nr * rng.uniform(0.12, 0.3)
            if lr < 1.5:
                continue
            ly = cy + offset[0] + (nr - lr) * 0.6 * rng.uniform(-1, 1)
            lx = cx + offset[1] + (nr - lr) * 0.6 * rng.uniform(-1, 1)
            lsize = int(2 * lr * 2.2) | 1
            lrho = _radial_shape(rng, lsize, lr, irregularity * 0.3)
            lregion = _paste_min(
                cells, lrho, int(np.round(ly)) - lsize // 2, int(np.round(lx)) - lsize // 2
            )
            if lregion is None:
                continue
            l_img, l_patch = lregion
            mask = (lrho[l_patch] < 1) & (nuclei[l_img] == cell_id) & (nucleoli[l_img] == 0)
            if mask.sum() < 4:
                continue
            nucleolus_id = len(nucleolus_cell) + 1
            nucleoli[l_img][mask] = nucleolus_id
            nucleolus_cell[nucleolus_id] = cell_id
    # A later, overlapping cell may have taken pixels of an earlier cell's nucleus.
    nuclei[cells != nuclei] = 0
    parent = np.zeros(len(nucleolus_cell) + 1, np.int32)
    for nucleolus_id, cell_id in nucleolus_cell.items():
        parent[nucleolus_id] = cell_id
    nucleoli[nuclei != parent[nucleoli]] = 0
    nucleolus_cell = {k: v for k, v in nucleolus_cell.items() if (nucleoli == k).any()}
    return cells, nuclei, nucleoli, nucleolus_cell


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random texture with features of about `scale` pixels."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), max(scale, 0.5))
    return (field - field.mean()) / (field.std() + 1e-8)


def _render(rng, cells, nuclei, nucleoli) -> np.ndarray:
    """Intensity image in [0, 1] (before noise and quantisation)."""
    shape = cells.shape
    n_cells = int(cells.max())
    style = rng.choice(["fluorescence", "fluorescence", "brightfield", "phase"])
    cell_level = rng.uniform(0.2, 1.0, n_cells + 1)
    nucleus_level = rng.uniform(0.2, 1.0, n_cells + 1)
    nucleolus_level = rng.uniform(0.1, 1.0)
    texture = _smooth_field(rng, shape, rng.uniform(0.7, 6)) * rng.uniform(0, 0.25)

    if style == "fluorescence":
        image = np.zeros(shape)
        image += cell_level[cells] * (cells > 0) * rng.uniform(0.15, 0.7)
        nuc = nuclei > 0
        image[nuc] = nucleus_level[nuclei[nuc]] * rng.uniform(0.5, 1.0)
        image[nucleoli > 0] = nucleolus_level * rng.choice([0.3, 1.4])
        image *= 1 + texture
        image += rng.uniform(0, 0.15)  # background / offset
    else:
        base = rng.uniform(0.4, 0.7)
        image = np.full(shape, base)
        contrast = rng.uniform(0.03, 0.25) * rng.choice([-1, 1])
        image += contrast * (cells > 0) * cell_level[cells]
        image += rng.uniform(0.03, 0.25) * rng.choice([-1, 1]) * (nuclei > 0)
        image += rng.uniform(0.03, 0.2) * rng.choice([-1, 1]) * (nucleoli > 0)
        image += texture * 0.3 * (cells > 0)
        # edges: halos around cells (phase) or dark rims (brightfield)
        boundaries = (ndi.morphological_gradient(cells, size=3) > 0).astype(float)
        width = rng.uniform(0.8, 3)
        rim = ndi.gaussian_filter(boundaries, width)
        rim /= rim.max() + 1e-8
        image += (rng.uniform(0.1, 0.4) if style == "phase" else -rng.uniform(0.05, 0.3)) * rim
    # uneven illumination
    gradient = np.linspace(-1, 1, shape[1])[None, :] * rng.uniform(-0.2, 0.2)
    gradient = gradient + np.linspace(-1, 1, shape[0])[:, None] * rng.uniform(-0.2, 0.2)
    illumination = 1 + gradient + 0.1 * _smooth_field(rng, shape, max(shape) / 4)
    image = image * illumination
    image = ndi.gaussian_filter(image, rng.uniform(0, 2))
    return image


def generate(rng: np.random.Generator, shape: tuple[int, int] = (256, 256)) -> SyntheticSample:
    """One random image with its cell / nucleus / nucleolus instance labels."""
    cells, nuclei, nucleoli, nucleolus_cell = _objects(rng, shape)
    image = _render(rng, cells, nuclei, nucleoli)
    image = np.clip(image, 0, None)
    photons = np.exp(rng.uniform(np.log(50), np.log(3000)))
    image = rng.poisson(image * photons) / photons
    image = image + rng.normal(0, rng.uniform(0, 0.05), shape)
    if rng.random() < 0.5:
        peak = 255
        dtype = np.uint8
    else:
        peak = int(rng.choice([4095, 65535]))
        dtype = np.uint16
    scale = peak * rng.uniform(0.3, 1.0) / max(np.percentile(image, 99.9), 1e-6)
    image = np.clip(image * scale, 0, peak).astype(dtype)
    return SyntheticSample(image, cells, nuclei, nucleoli, nucleolus_cell)


# Ruifrok & Johnston's optical density vectors (RGB) of the two classic histology stains.
HAEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
COLOUR_SHARE = 0.25  # of training images rendered in colour rather than gray


def colour_image(rng: np.random.Generator, sample: SyntheticSample) -> np.ndarray:
    """An RGB (H, W, 3) uint8 rendering of the sample's objects: a two-dye fluorescence
    composite (a nuclear and a cytoplasmic dye in two random channels) or an H&E-like
    brightfield stain (haematoxylin on nuclei, eosin on cytoplasm)."""
    cells, nuclei, nucleoli = sample.cells, sample.nuclei, sample.nucleoli
    count = int(cells.max()) + 1
    texture = 1 + _smooth_field(rng, cells.shape, rng.uniform(0.7, 4)) * rng.uniform(0, 0.2)
    cytoplasm = (cells > 0) * rng.uniform(0.2, 1.0, count)[cells] * texture
    nuclear = (nuclei > 0) * rng.uniform(0.4, 1.0, count)[nuclei] * texture
    nuclear = np.where(nucleoli > 0, nuclear * rng.choice([0.4, 1.5]), nuclear)
    blur = rng.uniform(0, 1.5)
    cytoplasm, nuclear = (ndi.gaussian_filter(x, blur) for x in (cytoplasm, nuclear))
    if rng.random() < 0.5:
        image = np.full((*cells.shape, 3), rng.uniform(0, 0.1))
        first, second, _ = rng.permutation(3)
        image[..., first] += nuclear
        image[..., second] += cytoplasm * rng.uniform(0.3, 1.0)
    else:
        density = nuclear[..., None] * HAEMATOXYLIN * rng.uniform(0.8, 2.0)
        density += (cytoplasm[..., None] + rng.uniform(0, 0.2)) * EOSIN * rng.uniform(0.3, 1.0)
        image = np.exp(-density)
    image = image + rng.normal(0, rng.uniform(0.005, 0.04), image.shape)
    return (np.clip(image / max(image.max(), 1e-6), 0, 1) * 255).astype(np.uint8)


def synthetic_source(
    rng: np.random.Generator, shape: tuple[int, int] = (256, 256)
) -> LabelledImage:
    """A training source (see `napari_sam.training.data.Source`) of generated images
    labelled at three levels, whole to subpart; a `COLOUR_SHARE` of them in colour.
    Picklable, so worker processes can draw from it."""
    sample = generate(rng, shape)
    image = colour_image(rng, sample) if rng.random() < COLOUR_SHARE else sample.image
    return LabelledImage(image, [sample.cells, sample.nuclei, sample.nucleoli])


def multiscale_source(rng: np.random.Generator) -> LabelledImage:
    """`synthetic_source` with sides of 256 to 512 px (log-uniform), so that crops up to
    twice the bundled model's input also show it cells at half their generated size,
    as a 512 px image does once resized to the input."""
    height, width = (int(256 * np.exp(rng.uniform(0, np.log(2)))) for _ in range(2))
    return synthetic_source(rng, (height, width))


EMPTY_SHARE = 0.05  # of blob images without any object


def blob_source(rng: np.random.Generator, shape: tuple[int, int] | None = None) -> LabelledImage:
    """An image in which every visible blob is one object, labelled at one level: for
    instance segmentation, where "everything" must have one meaning. Half the time the
    cells are drawn as solid blobs (crowded ones touch), else a nuclear stain shows the
    nuclei alone; rendering styles as `generate`; an `EMPTY_SHARE` of the images show
    no object (background and noise, or a blank image). Sides 256-512 px unless
    `shape`."""
    if shape is None:
        shape = tuple(int(256 * np.exp(rng.uniform(0, np.log(2)))) for _ in range(2))
    cells, nuclei, nucleoli, _ = _objects(rng, shape)
    objects = cells if rng.random() < 0.5 else nuclei
    if rng.random() < EMPTY_SHARE:  # background alone: "everything" is then nothing
        objects, nucleoli = np.zeros_like(objects), np.zeros_like(nucleoli)
        if rng.random() < 0.3:  # a blank (constant) image
            return LabelledImage(np.full(shape, rng.integers(0, 256), np.uint8), [objects])
    image = np.clip(_render(rng, objects, objects, nucleoli * (objects > 0)), 0, None)
    photons = np.exp(rng.uniform(np.log(50), np.log(3000)))
    image = rng.poisson(image * photons) / photons + rng.normal(0, rng.uniform(0, 0.05), shape)
    image = np.clip(image / max(np.percentile(image, 99.9), 1e-6), 0, 1)
    return LabelledImage((image * 255).astype(np.uint8), [objects])
