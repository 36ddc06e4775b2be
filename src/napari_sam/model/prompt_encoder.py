"""SAM's prompt encoder: points and boxes to sparse tokens, a mask to a dense map."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

# Rows of `point_embeddings`: what kind of location a sparse token stands for.
BACKGROUND_POINT, FOREGROUND_POINT, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = range(4)
PADDING_LABEL = -1


class RandomFourierEncoding(nn.Module):
    """Positional encoding of (x, y) in [0, 1]^2 by a fixed random Gaussian projection
    followed by sin and cos (Tancik et al., 2020)."""

    def __init__(self, num_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn(2, num_feats)
        )

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) normalised xy -> (..., 2 * num_feats)."""
        matrix = self.positional_encoding_gaussian_matrix
        projected = (2 * coords.to(matrix.dtype) - 1) @ matrix * (2 * math.pi)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Encoding of every cell centre of a height x width grid: (C, H, W)."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self.encode(coords).permute(2, 0, 1)

    def encode_pixels(self, xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode (x, y) pixel coordinates of an image of (height, width)."""
        height, width = image_size
        scaled = xy.to(torch.float32) / torch.tensor([width, height], device=xy.device)
        return self.encode(scaled)


class PromptEncoder(nn.Module):
    """Encodes prompts in the model's input frame (pixels of the resized image, xy order)."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: torch.Tensor | None = None
        self._dense_pe_key: tuple | None = None

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, (1, C, h, w), stored
        channels-last.

        Cached: it costs more than the rest of the prompt encoding and changes only when
        the random matrix does (loading weights, moving devices) or the grad mode does
        (an inference-mode tensor must not enter autograd)."""
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        key = (
            matrix.device,
            matrix.dtype,
            matrix.data_ptr(),
            matrix._version,
            torch.is_inference_mode_enabled(),
        )
        if self._dense_pe_key != key:
            grid = self.pe_layer.grid(*self.image_embedding_size).unsqueeze(0)
            # channels-last, like the image embedding (see Sam.encode_image)
            self._dense_pe = grid.contiguous(memory_format=torch.channels_last)
            self._dense_pe_key = key
        return self._dense_pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # integer coordinates name pixels; encode their centres
        if pad:
            # A lone point set gets a "not a point" token, as in training without a box.
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING_LABEL)], 1)
        tokens = self.pe_layer.encode_pixels(points, self.input_image_size)
        labels = labels[..., None]
        tokens = torch.where(labels == PADDING_LABEL, self.not_a_point_embed.weight, tokens)
        for kind in (BACKGROUND_POINT, FOREGROUND_POINT):
            tokens = tokens + (labels == kind) * self.point_embeddings[kind].weight
        return tokens

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = boxes.reshape(-1, 2, 2) + 0.5
        tokens = self.pe_layer.encode_pixels(corners, self.input_image_size)
        corner_types = torch.cat(
            [
                self.point_embeddings[BOX_TOP_LEFT].weight,
                self.point_embeddings[BOX_BOTTOM_RIGHT].weight,
            ]
        )
        return tokens + corner_types

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (sparse tokens (B, N, C), dense embedding (B or 1, C, h, w)).

        points: ((B, N, 2) xy, (B, N) labels 1 = foreground, 0 = background, -1 = padding);
        boxes: (B, 4) x0, y0, x1, y1; masks: (B, 1, 4h, 4w) low-resolution logits.
        """
        batch = next(
            (t.shape[0] for t in (points[0] if points else None, boxes, masks) if t is not None),
            1,
        )
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_downscaling(masks.to(weight.dtype))
        else:
            # One copy for all prompts: the decoder broadcasts it (batch 1).
            dense = weight.reshape(1, -1, 1, 1).expand(1, -1, *self.image_embedding_size)
        return torch.cat(sparse, dim=1), dense
