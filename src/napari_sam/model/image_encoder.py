"""SAM's image encoder: a ViT with windowed and global attention and a conv neck.

Tokens are kept as (B, H, W, C) grids throughout, so that windowing and the
decomposed relative position bias can address rows and columns directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock


def relative_position_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """Return R of shape (size, size, C) with R[i, j] the embedding of offset i - j.

    `table` holds one embedding per offset from -(L-1)/2 to (L-1)/2; when it was trained
    for another size it is linearly resampled to 2 * size - 1 offsets.
    """
    length = 2 * size - 1
    if table.shape[0] != length:
        table = F.interpolate(table.T.unsqueeze(0).float(), size=length, mode="linear")[0].T.to(
            table.dtype
        )
    offsets = torch.arange(size, device=table.device)
    index = offsets[:, None] - offsets[None, :] + (size - 1)
    return table[index]


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid with a decomposed
    relative position bias (one term for the row offset, one for the column offset)."""

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        by_row, by_col = self._position_terms(q, height, width)
        out = _chunked_attention(q, k, v, by_row, by_col)
        out = out.transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj(out)

    def _position_terms(
        self, q: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q . R_row (B, heads, H, W, H) and q . R_col (B, heads, H, W, W): the bias of
        query (h, w) for key (h', w') is by_row[h, w, h'] + by_col[h, w, w']."""
        batch, heads, _, head_dim = q.shape
        rows = relative_position_table(self.rel_pos_h, height).to(q.dtype)
        cols = relative_position_table(self.rel_pos_w, width).to(q.dtype)
        grid = q.reshape(batch, heads, height, width, head_dim)
        # einsum returns permuted views; the chunked expansion reads them many times.
        by_row = torch.einsum("bnhwc,hkc->bnhwk", grid, rows).contiguous()
        by_col = torch.einsum("bnhwc,wkc->bnhwk", grid, cols).contiguous()
        return by_row, by_col


# Elements of attention bias expanded at once. The whole (B, heads, N, N) bias of a
# vit_b global block is 805 MB: writing it costs more than the attention itself on a
# CPU, while chunks of a few MB stay in cache between being written and read. A GPU
# has the memory bandwidth but pays per kernel launch, so it takes far larger chunks.
_BIAS_CHUNK_ELEMENTS = 1 << 22
_BIAS_CHUNK_ELEMENTS_GPU = 1 << 27


def _chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    by_row: torch.Tensor,
    by_col: torch.Tensor,
) -> torch.Tensor:
    """Attention with the decomposed bias expanded chunk by chunk: a few heads at a
    time, or a band of query rows of one head when a head alone is too large."""
    batch, heads, tokens, _ = q.shape
    rows, width = by_row.shape[2], by_row.shape[3]
    chunk = _BIAS_CHUNK_ELEMENTS if q.device.type == "cpu" else _BIAS_CHUNK_ELEMENTS_GPU
    per_head = batch * tokens * tokens
    head_step = max(1, chunk // per_head)
    row_step = rows if per_head <= chunk else max(1, chunk // (batch * width * tokens))
    explicit = _explicit_products(q)
    keys = k.transpose(-1, -2).contiguous() if explicit else k  # read faster contiguous
    out = torch.empty_like(q)
    for h in range(0, heads, head_step):
        hs = slice(h, h + head_step)
        for r in range(0, rows, row_step):
            band = slice(r, r + row_step)
            mask = _expand_bias(by_row[:, hs, band], by_col[:, hs, band]).flatten(2, 3)
            queries = slice(r * width, (r + row_step) * width)
            if explicit:
                out[:, hs, queries] = _explicit_attention(
                    q[:, hs, queries], keys[:, hs], v[:, hs], mask
                )
            else:
                out[:, hs, queries] = F.scaled_dot_product_attention(
                    q[:, hs, queries], k[:, hs], v[:, hs], attn_mask=mask
                )
    return out


def _expand_bias(by_row: torch.Tensor, by_col: torch.Tensor) -> torch.Tensor:
    """(..., rows) and (..., cols) -> (..., rows * cols) with bias[..., (i, j)] =
    by_row[..., i] + by_col[..., j].

    PyTorch adds bfloat16 without vectors along short rows: for 14 x 14 windows the
    broadcast add is 9x slower than a product with 0/1 indicator rows, which gives the
    same sums exactly (one rounding of an exact sum either way)."""
    cols = by_col.shape[-1]
    if by_row.dtype == torch.bfloat16 and by_row.device.type == "cpu" and cols < 32:
        indicator = _indicator_rows(by_row.shape[-1], cols, by_row.dtype)
        return torch.cat([by_row, by_col], dim=-1) @ indicator
    return (by_row.unsqueeze(-1) + by_col.unsqueeze(-2)).flatten(-2)


@functools.cache
def _indicator_rows(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows + cols, rows * cols) of 0/1 on the CPU: row i marks the keys in key row i,
    row rows + j those in key column j. Made once, not for every chunk."""
    eye_rows = torch.eye(rows, dtype=dtype).repeat_interleave(cols, dim=1)
    eye_cols = torch.eye(cols, dtype=dtype).repeat(1, rows)
    return torch.cat([eye_rows, eye_cols])


def _explicit_products(q: torch.Tensor) -> bool:
    """PyTorch's fused CPU kernel computes bfloat16 at the float32 rate, while a CPU with
    bfloat16 dot products (AVX512-BF16, AMX) runs bfloat16 matrix products about three
    times as fast: there two explicit products win (vit_b encoder 3.8 s against 4.6 s).
    Float32, GPUs and other CPUs keep the fused kernel."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and _cpu_has_bf16_products()


@functools.cache
def _cpu_has_bf16_products() -> bool:
    # torch.cpu's checks are private; where they are missing keep the fused kernel
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _explicit_attention(
    q: torch.Tensor, keys_t: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with the keys given transposed, (..., d, N).
    The scores are written over `mask`, which the caller made for this call: an
    out-of-place product would first copy it, a pass as long as the product."""
    scores = mask.flatten(0, 1).baddbmm_(
        q.flatten(0, 1), keys_t.flatten(0, 1), alpha=q.shape[-1] ** -0.5
    )
    return torch.bmm(scores.softmax(dim=-1), v.flatten(0, 1)).view(q.shape)


def split_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nWindows, window, window, C), zero-padding H and W up to a
    multiple of the window (the padding takes part in attention as in the original)."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    x = x.view(batch, rows, window, cols, window, channels).transpose(2, 3)
    return x.reshape(batch * rows * cols, window, window, channels)


def merge_windows(windows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `split_windows`, dropping the padding."""
    window, channels = windows.shape[1], windows.shape[3]
    rows, cols = -(-height // window), -(-width // window)
    batch = windows.shape[0] // (rows * cols)
    x = windows.view(batch, rows, cols, window, window, channels).transpose(2, 3)
    x = x.reshape(batch, rows * window, cols * window, channels)
    return x[:, :height, :width, :]


class Block(nn.Module):
    """Pre-norm transformer block; windowed when `window_size` > 0, global otherwise."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size or grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.window_size:
            height, width = x.shape[1:3]
            h = merge_windows(self.attn(split_windows(h, self.window_size)), height, width)
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Contiguous once here: the residual stream would otherwise keep the conv's
        # channels-first layout, and every LayerNorm would copy it.
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class ImageEncoderViT(nn.Module):
    """(B, 3, img_size, img_size) normalised image -> (B, out_chans, grid, grid) embedding."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                grid_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(
        self, x: torch.Tensor, on_block: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """`on_block(done, total)` is called after each block: progress for a caller in
        another thread, which may also raise from it to stop the computation."""
        x = self.patch_embed(x) + self.pos_embed
        for done, block in enumerate(self.blocks, start=1):
            x = block(x)
            if on_block is not None:
                on_block(done, len(self.blocks))
        return self.neck(x.permute(0, 3, 1, 2))
