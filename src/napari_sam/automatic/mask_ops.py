"""Mask statistics, boxes and non-maximum suppression in plain torch.

The automatic generator needs, for thousands of candidate masks, the area, the
stability score and the bounding box of the mask *at the image's resolution*, although
the decoder gives 256 x 256 logits. Upscaling every candidate (as SAM's reference code
does) costs a full-resolution image per candidate. Here these numbers are computed
exactly without it:

- `Sam.postprocess_masks` is linear and separable: bilinear upscaling to the padded
  input, cropping, then bilinear resizing to the original size. Along each axis this is
  a matrix whose rows are non-negative and sum to one (`axis_resampling`), so every
  output logit is a convex combination of a small rectangle of low-res logits.
- Output pixels sharing the same rectangle form a block (`AxisBlocks`). If the
  rectangle's minimum exceeds a threshold, the whole block does; if its maximum does
  not, none of it does. Only the blocks that straddle a threshold, the mask boundary,
  are evaluated pixel by pixel (`logit_statistics`).

- A record's mask is needed only inside its box: `Resampling.upscale` evaluates the
  logits of a window of the image, `rows[r0:r1] @ low @ cols[c0:c1].T`, on only the
  low-res positions the window reads (`AxisMatrix`), so no full-size array is ever
  made for it; `upscaled_statistics` upscales irregular candidates in
  pieces bounded by pixels.
- `remove_small_regions` works on a mask inside its box with the result it has on the
  full mask.

Boxes follow the mask convention of the package: (min_row, min_col, max_row, max_col)
of the first and last mask pixels, inclusive; IoU between boxes uses the area
(max_row - min_row) * (max_col - min_col), as the reference's box NMS does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def linear_resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 matrix of 1D bilinear resizing as done by
    `F.interpolate(..., mode="bilinear", align_corners=False)` without antialiasing."""
    scale = in_size / out_size
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    frac = source - lower
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, lower), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, upper), frac, accumulate=True)
    return matrix


def axis_resampling(
    low_res: int, img_size: int, input_len: int, original_len: int
) -> torch.Tensor:
    """One axis of `Sam.postprocess_masks` as an (original_len, low_res) matrix."""
    matrix = linear_resize_matrix(low_res, img_size)[:input_len]
    if input_len != original_len:
        matrix = linear_resize_matrix(input_len, original_len) @ matrix
    return matrix


def _support(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last low-res position read by each output position (rows of `matrix`)."""
    nonzero = matrix > 0
    positions = torch.arange(matrix.shape[1])
    first = torch.where(nonzero, positions, matrix.shape[1]).amin(1)
    last = torch.where(nonzero, positions, -1).amax(1)
    return first, last


@dataclass(frozen=True)
class AxisMatrix:
    """One axis of the resampling as an (L, n_low) float32 matrix, with the first and
    last low-res position each output position reads ((L,) each): a range of output
    positions then multiplies only the few low-res positions it reads."""

    matrix: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> AxisMatrix:
        return cls(matrix.float(), *_support(matrix))

    def to(self, device: torch.device) -> AxisMatrix:
        return AxisMatrix(*(t.to(device) for t in (self.matrix, self.first, self.last)))

    def part(self, start: int, stop: int) -> tuple[torch.Tensor, slice]:
        """The matrix of output positions start..stop - 1, restricted to the low-res
        positions they read, and those positions as a slice."""
        read = slice(int(self.first[start:stop].min()), int(self.last[start:stop].max()) + 1)
        return self.matrix[start:stop, read], read


@dataclass(frozen=True)
class AxisBlocks:
    """Runs of consecutive output positions along one axis that read the same low-res
    positions, with the resampling weights of each position."""

    n_low: int  # low-res positions that matter (a prefix)
    starts: torch.Tensor  # (G,) first output position of each block
    sizes: torch.Tensor  # (G,) output positions in each block
    support: torch.Tensor  # (G, K) low-res positions read (last one repeated as padding)
    weights: torch.Tensor  # (G, S, K) float32; zero for padding positions
    valid: torch.Tensor  # (G, S) bool: position exists (S = largest block)

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> AxisBlocks:
        first, last = _support(matrix)
        change = torch.ones(len(matrix), dtype=torch.bool)
        change[1:] = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
        starts = torch.nonzero(change)[:, 0]
        sizes = torch.diff(starts, append=torch.tensor([len(matrix)]))
        block_first, block_last = first[starts], last[starts]
        width = int((block_last - block_first).max()) + 1
        offsets = torch.arange(width)
        support = torch.minimum(block_first[:, None] + offsets, block_last[:, None])
        real = (block_first[:, None] + offsets) <= block_last[:, None]
        longest = int(sizes.max())
        out_pos = starts[:, None] + torch.arange(longest)  # (G, S)
        valid = torch.arange(longest) < sizes[:, None]
        rows = out_pos.clamp(max=len(matrix) - 1)
        weights = matrix[rows[:, :, None], support[:, None, :]]
        weights = weights * (valid[:, :, None] & real[:, None, :])
        return cls(int(last.max()) + 1, starts, sizes, support, weights.float(), valid)

    def to(self, device: torch.device) -> AxisBlocks:
        return AxisBlocks(
            self.n_low,
            *(
                t.to(device)
                for t in (self.starts, self.sizes, self.support, self.weights, self.valid)
            ),
        )


@dataclass(frozen=True)
class Resampling:
    """How 256 x 256 decoder logits map to the pixels of one (crop of an) image."""

    rows: AxisBlocks
    cols: AxisBlocks
    shape: tuple[int, int]
    row_matrix: AxisMatrix
    col_matrix: AxisMatrix

    @classmethod
    def for_model(
        cls,
        low_res: tuple[int, int],
        img_size: int,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> Resampling:
        rows = axis_resampling(low_res[0], img_size, input_size[0], original_size[0])
        cols = axis_resampling(low_res[1], img_size, input_size[1], original_size[1])
        return cls(
            AxisBlocks.from_matrix(rows).to(device),
            AxisBlocks.from_matrix(cols).to(device),
            tuple(original_size),
            AxisMatrix.from_matrix(rows).to(device),
            AxisMatrix.from_matrix(cols).to(device),
        )

    def upscale(self, low: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
        """The logits `Sam.postprocess_masks` gives inside `window` (min_row, min_col,
        max_row, max_col; exclusive ends) for (N, h, w) low-res logits: (N, max_row -
        min_row, max_col - min_col) float32 (equal up to float rounding), computed as
        rows[min_row:max_row] @ low @ cols[min_col:max_col].T on the low-res positions
        the window reads, without any larger array."""
        r0, c0, r1, c1 = window
        if not (0 <= r0 < r1 <= self.shape[0] and 0 <= c0 < c1 <= self.shape[1]):
            raise ValueError(f"The window {window} is empty or not inside {self.shape}.")
        rows, row_read = self.row_matrix.part(r0, r1)
        cols, col_read = self.col_matrix.part(c0, c1)
        return rows @ low[:, row_read, col_read].float() @ cols.T


def _block_extrema(low: torch.Tensor, rows: AxisBlocks, cols: AxisBlocks):
    """Minimum and maximum low-res logit under every output block: (N, Gr, Gc) each."""
    row_max = row_min = low[:, rows.support[:, 0], :]
    for k in range(1, rows.support.shape[1]):
        taken = low[:, rows.support[:, k], :]
        row_max, row_min = torch.maximum(row_max, taken), torch.minimum(row_min, taken)
    cell_max, cell_min = row_max[:, :, cols.support[:, 0]], row_min[:, :, cols.support[:, 0]]
    for k in range(1, cols.support.shape[1]):
        cell_max = torch.maximum(cell_max, row_max[:, :, cols.support[:, k]])
        cell_min = torch.minimum(cell_min, row_min[:, :, cols.support[:, k]])
    return cell_min, cell_max


def logit_statistics(
    low: torch.Tensor,
    resampling: Resampling,
    thresholds: tuple[float, ...],
    box_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact statistics of the upscaled logits of (N, h, w) low-res logits, without
    upscaling them: the number of output pixels above each threshold (N, T) int64, and
    the inclusive box (N, 4) of the pixels above `box_threshold` (zeros when none).

    `box_threshold` must be one of `thresholds`.
    """
    rows, cols = resampling.rows, resampling.cols
    low = low[:, : rows.n_low, : cols.n_low].float()
    count = len(low)
    device = low.device
    cell_min, cell_max = _block_extrema(low, rows, cols)
    straddles = torch.zeros_like(cell_min, dtype=torch.bool)
    for t in thresholds:
        straddles |= (cell_min <= t) & (cell_max > t)
    # Whole blocks: (blocks above) @ column sizes @ row sizes, exact in float64.
    row_sizes, col_sizes = rows.sizes.double(), cols.sizes.double()
    counts = torch.stack(
        [((((cell_min > t) & ~straddles).double() @ col_sizes) @ row_sizes) for t in thresholds],
        dim=1,
    ).long()

    # Boxes from the blocks that lie wholly above the box threshold ...
    big = max(resampling.shape) + 1
    inside = (cell_min > box_threshold) & ~straddles
    row_hit, col_hit = inside.any(2), inside.any(1)
    row_ends, col_ends = rows.starts + rows.sizes - 1, cols.starts + cols.sizes - 1
    box_min_r = torch.where(row_hit, rows.starts, big).amin(1)
    box_max_r = torch.where(row_hit, row_ends, -1).amax(1)
    box_min_c = torch.where(col_hit, cols.starts, big).amin(1)
    box_max_c = torch.where(col_hit, col_ends, -1).amax(1)

    # ... and every pixel of the straddling blocks, evaluated exactly.
    which, g_r, g_c = torch.nonzero(straddles, as_tuple=True)
    if len(which):
        patch = low[
            which[:, None, None], rows.support[g_r][:, :, None], cols.support[g_c][:, None, :]
        ]
        values = rows.weights[g_r] @ patch @ cols.weights[g_c].transpose(1, 2)  # (M, Sr, Sc)
        valid = rows.valid[g_r][:, :, None] & cols.valid[g_c][:, None, :]
        for i, t in enumerate(thresholds):
            above = (values > t) & valid
            counts[:, i].index_add_(0, which, above.sum((1, 2)))
            if t == box_threshold:
                positive = above
        out_r = rows.starts[g_r][:, None] + torch.arange(positive.shape[1], device=device)
        out_c = cols.starts[g_c][:, None] + torch.arange(positive.shape[2], device=device)
        hit_r, hit_c = positive.any(2), positive.any(1)
        for target, found, reduce in (
            (box_min_r, torch.where(hit_r, out_r, big).amin(1), "amin"),
            (box_max_r, torch.where(hit_r, out_r, -1).amax(1), "amax"),
            (box_min_c, torch.where(hit_c, out_c, big).amin(1), "amin"),
            (box_max_c, torch.where(hit_c, out_c, -1).amax(1), "amax"),
        ):
            target.scatter_reduce_(0, which, found, reduce)
    boxes = torch.stack([box_min_r, box_min_c, box_max_r, box_max_c], dim=1)
    empty = box_max_r < 0
    boxes[empty] = 0
    return counts.reshape(count, len(thresholds)), boxes


def upscaled_statistics(
    low: torch.Tensor,
    resampling: Resampling,
    thresholds: tuple[float, ...],
    box_threshold: float,
    max_pixels: int = 2**24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`logit_statistics` by upscaling, for logits too irregular for its shortcut: the
    logits are made in pieces (whole candidates, or stripes of rows of one) of at most
    `max_pixels` pixels each (64 MB of float32 logits by default), so memory does not
    grow with the image or the candidates."""
    height, width = resampling.shape
    stripe = max(1, max_pixels // width)
    per_piece = max(1, max_pixels // (min(stripe, height) * width))
    counts = torch.zeros(len(low), len(thresholds), dtype=torch.int64, device=low.device)
    row_hit = torch.zeros(len(low), height, dtype=torch.bool, device=low.device)
    col_hit = torch.zeros(len(low), width, dtype=torch.bool, device=low.device)
    for start in range(0, len(low), per_piece):
        stop = min(start + per_piece, len(low))
        for r0 in range(0, height, stripe):
            r1 = min(r0 + stripe, height)
            logits = resampling.upscale(low[start:stop], (r0, 0, r1, width))
            for i, t in enumerate(thresholds):
                above = logits > t
                counts[start:stop, i] += above.flatten(1).sum(1, dtype=torch.int32)  # faster
                if t == box_threshold:
                    row_hit[start:stop, r0:r1] = above.any(2)
                    col_hit[start:stop] |= above.any(1)
    return counts, _boxes_from_hits(row_hit, col_hit)


def stability_score(above_high: torch.Tensor, above_low: torch.Tensor) -> torch.Tensor:
    """IoU of the masks thresholded at (threshold + offset) and (threshold - offset),
    from their pixel counts (the first lies inside the second). 0/0 gives NaN, which
    fails every threshold."""
    return above_high.double() / above_low.double()


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive boxes (N, 4) of (N, H, W) bool masks; zeros for an empty mask."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, dtype=torch.int64, device=masks.device)
    return _boxes_from_hits(masks.any(2), masks.any(1))


def _boxes_from_hits(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Inclusive boxes (N, 4) from which rows (N, H) and columns (N, W) hold a pixel."""
    height, width = rows.shape[1], cols.shape[1]
    r_index = torch.arange(height, device=rows.device)
    c_index = torch.arange(width, device=cols.device)
    boxes = torch.stack(
        [
            torch.where(rows, r_index, height).amin(1),
            torch.where(cols, c_index, width).amin(1),
            torch.where(rows, r_index, -1).amax(1),
            torch.where(cols, c_index, -1).amax(1),
        ],
        dim=1,
    )
    boxes[~rows.any(1)] = 0
    return boxes


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first.

    Boxes are visited by decreasing score (ties in their given order); each kept box
    removes the later ones whose IoU with it exceeds `iou_threshold`.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    ordered = boxes.cpu().float()[order]
    areas = box_area(ordered)
    removed = np.zeros(len(ordered), dtype=bool)
    kept = []
    for i in range(len(ordered)):
        if removed[i]:
            continue
        kept.append(i)
        rest = ordered[i + 1 :]
        if len(rest) == 0:
            break
        top_left = torch.maximum(ordered[i, :2], rest[:, :2])
        bottom_right = torch.minimum(ordered[i, 2:], rest[:, 2:])
        overlap = (bottom_right - top_left).clamp(min=0).prod(1)
        iou = overlap / (areas[i] + areas[i + 1 :] - overlap)
        removed[i + 1 :] |= (iou > iou_threshold).numpy()
    return order[torch.tensor(kept, dtype=torch.int64)]


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive box (min_row, min_col, max_row, max_col) of a 2D bool mask; zeros when
    it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1]))


def crop_to_box(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2D bool mask inside its box (a copy) and the box's (min_row, min_col); an empty
    mask gives a (1, 1) False array at (0, 0)."""
    r0, c0, r1, c1 = mask_bbox(mask)
    return mask[r0 : r1 + 1, c0 : c1 + 1].copy(), (r0, c0)


def remove_small_regions(
    mask: np.ndarray, origin: tuple[int, int], image_shape: tuple[int, int], min_area: int
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """Fill the holes, then drop the islands, smaller than `min_area` pixels
    (8-connected; the largest island stays when all are small) of a mask given inside its
    box: `mask` (h, w) bool is the image's mask at rows origin[0].. and columns
    origin[1].. of an image of `image_shape` (H, W) and is empty elsewhere. The result
    is the one on the full (H, W) mask, as (mask inside its new box, the box's origin,
    whether anything changed). A mask of the whole image is the case origin (0, 0),
    mask.shape == image_shape."""
    from skimage.measure import label

    mask, origin, filled = _fill_small_holes(mask, origin, image_shape, min_area)
    regions, count = label(mask, connectivity=2, return_num=True)
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    if count == 0 or (sizes >= min_area).all():
        return mask, origin, filled
    big = np.flatnonzero(sizes >= min_area) + 1
    if len(big) == 0:
        big = np.array([np.argmax(sizes) + 1])
    mask, (r0, c0) = crop_to_box(np.isin(regions, big))
    return mask, (origin[0] + r0, origin[1] + c0), True


def _fill_small_holes(mask, origin, image_shape, min_area):
    """The holes step of `remove_small_regions`. Background touching the box's edge
    continues outside it: the box is padded by one pixel on each side that is not an
    image edge, and the pixels of the image outside the box count in the size of the
    background region they belong to."""
    from skimage.measure import label

    (height, width), (r0, c0), (h, w) = image_shape, origin, mask.shape
    top, bottom, left, right = r0 > 0, r0 + h < height, c0 > 0, c0 + w < width
    pad = ((int(top), int(bottom)), (int(left), int(right)))
    regions, count = label(np.pad(~mask, pad, constant_values=True), connectivity=2,
                           return_num=True)  # fmt: skip
    weights = np.pad(np.ones(mask.shape), pad)
    # The image outside the box: above and below it apart when the box spans the image's
    # width, left and right apart when it spans the height, else one region around it.
    # Its size is carried by one pad pixel of each part.
    if not (left or right):
        parts = [((0, 0), r0 * width, top), ((-1, 0), (height - r0 - h) * width, bottom)]
    elif not (top or bottom):
        parts = [((0, 0), c0 * height, left), ((0, -1), (width - c0 - w) * height, right)]
    else:
        corner = (0, 0) if top or left else (-1, 0) if bottom else (0, -1)
        parts = [(corner, height * width - h * w, True)]
    for pixel, size, present in parts:
        if present:
            weights[pixel] += size
    sizes = np.bincount(regions.ravel(), weights.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if len(small) == 0:
        return mask, origin, False
    inside = (slice(pad[0][0], pad[0][0] + h), slice(pad[1][0], pad[1][0] + w))
    on_pad = np.ones(regions.shape, bool)
    on_pad[inside] = False
    if np.isin(regions[on_pad], small).any():
        # A small background region reaches outside the box (an image hardly larger than
        # min_area): fill it on the full mask, where the box may grow.
        full = np.zeros(image_shape, bool)
        full[r0 : r0 + h, c0 : c0 + w] = mask
        full, _, changed = _fill_small_holes(full, (0, 0), image_shape, min_area)
        return (*crop_to_box(full), changed)
    return mask | np.isin(regions[inside], small), origin, True
