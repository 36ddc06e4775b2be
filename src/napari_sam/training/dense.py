"""Dense auxiliary supervision of the image encoder, for training from scratch.

SAM's loss reaches the encoder only through a few prompted objects per image, so a
randomly initialised encoder learns object outlines slowly (the first bundled model gave
blobs around the click). A training-only head reads, from each token of the image
embedding, the 8 x 8 (patch-sized) block of pixels under it: is the pixel inside an
object of each label level (cell / nucleus / nucleolus), and is it on a boundary between
instances. Every pixel of every image then teaches the encoder where the edges are. The
head is not part of the model and is never saved with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 3  # whole / part / subpart; fewer levels leave their channels empty


class DenseHead(nn.Module):
    """A 1x1 convolution from embedding channels to `LEVELS + 1` maps per pixel of each
    token's patch (sub-pixel shuffle): (B, C, h, w) -> (B, LEVELS + 1, h * p, w * p)."""

    def __init__(self, channels: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.readout = nn.Conv2d(channels, (LEVELS + 1) * patch_size**2, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.readout(features), self.patch_size)


def dense_targets(levels: torch.Tensor) -> torch.Tensor:
    """(B, depth, H, W) instance labels -> (B, LEVELS + 1, H, W) float targets: inside
    an object of each level, then on a boundary (a pixel whose label differs from a
    neighbour's at any level, widened to 3 px so the class is not vanishingly rare)."""
    levels = levels[:, :LEVELS]
    inside = (levels > 0).float()
    if inside.shape[1] < LEVELS:
        missing = LEVELS - inside.shape[1]
        inside = F.pad(inside, (0, 0, 0, 0, 0, missing))
    edge = torch.zeros_like(levels, dtype=torch.bool)
    across = levels[..., :, 1:] != levels[..., :, :-1]
    down = levels[..., 1:, :] != levels[..., :-1, :]
    edge[..., :, 1:] |= across
    edge[..., :, :-1] |= across
    edge[..., 1:, :] |= down
    edge[..., :-1, :] |= down
    boundary = edge.any(dim=1, keepdim=True).float()
    boundary = F.max_pool2d(boundary, 3, stride=1, padding=1)
    return torch.cat([inside, boundary], dim=1)


def dense_loss(head: DenseHead, features: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the head's maps against `dense_targets(levels)`;
    `levels` is at the model's input size, `features` the embedding (B, C, h, w)."""
    logits = head(features.float())
    return F.binary_cross_entropy_with_logits(logits, dense_targets(levels))
