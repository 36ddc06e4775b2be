"""Areas, stability counts and boxes of upscaled masks, from the decoder's low-res logits.

The automatic generator needs, for thousands of candidate masks, the area, the
stability score and the bounding box of the mask *at the image's resolution*, although
the decoder gives low-res (256 x 256 for Meta's models) logits. Upscaling every
candidate to the whole image (as SAM's reference code does) costs a full-resolution
image per candidate. Here the same numbers are computed with less:

- `Sam.postprocess_masks` is linear and separable: bilinear upscaling to the padded
  input, cropping, then bilinear resizing to the original size. Along each axis this is
  a matrix whose rows are non-negative and sum to one (`axis_resampling`), so every
  output logit is a convex combination of a small rectangle of low-res logits.
- Hence an output pixel can exceed a threshold only where a low-res logit it reads
  does: `windowed_statistics` upscales each candidate only inside the window of pixels
  that read such a logit (`candidate_windows`) - the object and a margin, not the image.
- For large objects, output pixels sharing the same rectangle form a block
  (`AxisBlocks`). If the rectangle's minimum exceeds a threshold, the whole block does;
  if its maximum does not, none of it does. Only the blocks that straddle a threshold,
  the mask boundary, are evaluated pixel by pixel (`logit_statistics`).
- A record's mask is needed only inside its box: `Resampling.upscale` evaluates the
  logits of a window of the image, `rows[r0:r1] @ low @ cols[c0:c1].T`, on only the
  low-res positions the window reads (`AxisMatrix`), so no full-size array is ever
  made for it; `upscaled_statistics` upscales irregular candidates in
  pieces bounded by pixels.

Boxes are (min_row, min_col, max_row, max_col) of the first and last mask pixels,
inclusive; windows are (min_row, min_col, max_row, max_col) with exclusive ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A candidate whose window (the pixels that can pass a threshold) is at most this share
# of the image is upscaled inside it; a larger one is evaluated at its boundary only.
_WINDOW_SHARE = 0.25
# Float rounding of a convex combination: a margin below the lowest threshold.
_FLOOR_MARGIN = 1e-3
# A large candidate whose logits straddle a threshold in more than this fraction of the
# blocks is upscaled directly: evaluating its boundary pixel by pixel would cost more.
_SPARSE_LIMIT = 0.1
_CHUNK = 16  # large candidates whose low-res logits are examined at a time

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


def candidate_windows(low: torch.Tensor, resampling: Resampling, floor: float) -> torch.Tensor:
    """(N, 4) int64 windows (min_row, min_col, max_row, max_col; exclusive ends) of the
    output pixels that read a low-res logit above `floor`, for (N, h, w) low-res logits;
    outside its window no upscaled logit of a candidate exceeds `floor` (each is a convex
    combination of the low-res logits it reads). An empty window (min == max) when no
    low-res logit exceeds it."""
    rows, cols = resampling.row_matrix, resampling.col_matrix
    above = low[:, : resampling.rows.n_low, : resampling.cols.n_low] > floor
    window = []
    for hit, axis in ((above.any(2), rows), (above.any(1), cols)):
        index = torch.arange(hit.shape[1], device=hit.device)
        low_first = torch.where(hit, index, hit.shape[1]).amin(1)
        low_last = torch.where(hit, index, -1).amax(1)
        # first/last never decrease along an axis: the window is a range of positions.
        start = torch.searchsorted(axis.last, low_first)
        stop = torch.searchsorted(axis.first, low_last, right=True)
        window.append((start, torch.maximum(stop, start)))
    (r0, r1), (c0, c1) = window
    empty = (r1 <= r0) | (c1 <= c0)
    return torch.stack([r0, c0, r1, c1], 1).masked_fill(empty[:, None], 0)


def windowed_statistics(
    low: torch.Tensor,
    resampling: Resampling,
    thresholds: tuple[float, ...],
    box_threshold: float,
    windows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`logit_statistics` by upscaling each candidate inside its window from
    `candidate_windows` at a floor below every threshold: cheap for objects that are
    small against the image, whatever their shape."""
    counts = torch.zeros(len(low), len(thresholds), dtype=torch.int64, device=low.device)
    boxes = torch.zeros(len(low), 4, dtype=torch.int64, device=low.device)
    for i, window in enumerate(windows.tolist()):
        r0, c0, r1, _ = window
        if r1 <= r0:
            continue
        logits = resampling.upscale(low[i : i + 1], window)[0]
        for k, t in enumerate(thresholds):
            above = logits > t
            counts[i, k] = above.sum()
            if t == box_threshold and counts[i, k] > 0:
                origin = torch.tensor([r0, c0, r0, c0], device=boxes.device)
                boxes[i] = masks_to_boxes(above[None])[0] + origin
    return counts, boxes


def image_statistics(
    low: torch.Tensor, resampling: Resampling, thresholds: tuple[float, ...], box_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`logit_statistics` of (N, h, w) low-res logits by the cheapest exact route for each
    candidate: objects small against the image upscaled inside their windows
    (`windowed_statistics`); large ones via block bounds where the logits are regular,
    via upscaling in pieces bounded by pixels where they are not."""
    counts = torch.zeros(len(low), len(thresholds), dtype=torch.int64, device=low.device)
    boxes = torch.zeros(len(low), 4, dtype=torch.int64, device=low.device)
    windows = candidate_windows(low, resampling, min(thresholds) - _FLOOR_MARGIN)
    pixels = (windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1])
    small = pixels <= _WINDOW_SHARE * resampling.shape[0] * resampling.shape[1]
    index = torch.nonzero(small & (pixels > 0))[:, 0]
    counts[index], boxes[index] = windowed_statistics(
        low[index], resampling, thresholds, box_threshold, windows[index]
    )
    large = torch.nonzero(~small)[:, 0]
    for start in range(0, len(large), _CHUNK):
        chunk = large[start : start + _CHUNK]
        part = low[chunk]
        regular = _regular(part, resampling, thresholds)
        for method, chosen in ((logit_statistics, regular), (upscaled_statistics, ~regular)):
            if chosen.any():
                counts[chunk[chosen]], boxes[chunk[chosen]] = method(
                    part[chosen], resampling, thresholds, box_threshold
                )
    return counts, boxes


def _regular(low: torch.Tensor, resampling: Resampling, levels) -> torch.Tensor:
    """Which candidates have few blocks that straddle a level (cheap to evaluate)."""
    rows, cols = resampling.rows, resampling.cols
    # A cheap look: neighbouring low-res logits on either side of a level.
    part = low[:, : rows.n_low, : cols.n_low]
    crossings = torch.zeros(len(part), device=part.device)
    for t in levels:
        above = part > t
        crossings += (above[:, 1:, :] != above[:, :-1, :]).sum((1, 2))
        crossings += (above[:, :, 1:] != above[:, :, :-1]).sum((1, 2))
    return crossings < _SPARSE_LIMIT * part.shape[1] * part.shape[2]


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


