"""SAM's mask decoder: prompt tokens + image embedding -> mask logits and predicted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .factored import FactoredKeys, ImageSide
from .transformer import TwoWayTransformer


def _outputs(multimask_output: bool) -> slice:
    """The mask tokens a caller gets: the 3 ambiguity outputs, or the single one."""
    return slice(1, None) if multimask_output else slice(0, 1)


class MaskDecoder(nn.Module):
    """Decodes one IoU token and `num_multimask_outputs + 1` mask tokens.

    Token 0 gives the single unambiguous mask (used for several prompts); tokens 1..3
    give the ambiguity masks for a single point. Each token's MLP output is a linear
    classifier applied to every location of the upscaled image features.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(
                transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2
            ),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return low-res mask logits (B, M, 4h, 4w) and predicted IoU (B, M), with M = 3
        for `multimask_output` and 1 otherwise.

        image_embeddings: (1 or B, C, h, w), shared by all B prompts when its batch is 1.
        image_side: the embeddings + dense prompt as tokens with their PE, when the
        caller keeps them (see `Sam._unmasked_image_side`).
        """
        hs, src = self._attend(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            image_side,
        )
        chosen = _outputs(multimask_output)
        grid = dense_prompt_embeddings.shape[-2:]
        return self._masks(hs, src, grid, chosen), self._iou(hs)[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' logits (B, 4, 4h, 4w) and IoU predictions (B, 4)."""
        hs, src = self._attend(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self._masks(hs, src, dense_prompt_embeddings.shape[-2:]), self._iou(hs)

    def predict_iou_first(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        min_iou: float,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like `forward`, but mask logits only for the prompts whose predicted IoU
        exceeds `min_iou` for at least one output: the IoU head needs no upscaling, so
        a batch of prompts (segment everything) skips the costliest step for the rest.

        Returns (IoU of every prompt (B, M), the kept prompt indices (K,), their mask
        logits (K, M, 4h, 4w)).
        """
        hs, src = self._attend(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            image_side,
        )
        chosen = _outputs(multimask_output)
        iou = self._iou(hs)[:, chosen]
        rows = torch.nonzero((iou > min_iou).any(dim=1))[:, 0]
        if len(rows) == 0:
            height, width = dense_prompt_embeddings.shape[-2:]
            return iou, rows, iou.new_empty(0, iou.shape[1], 4 * height, 4 * width)
        if isinstance(src, FactoredKeys):
            src = src.select(rows)
        elif src.shape[0] > 1:
            src = src[rows]
        masks = self._masks(hs[rows], src, dense_prompt_embeddings.shape[-2:], chosen)
        return iou, rows, masks

    def _iou(self, hs: torch.Tensor) -> torch.Tensor:
        return self.iou_prediction_head(hs[:, 0])

    def _masks(
        self,
        hs: torch.Tensor,
        src: torch.Tensor | FactoredKeys,
        grid: tuple[int, int],
        chosen: slice = slice(None),
    ) -> torch.Tensor:
        """Logits of the `chosen` mask tokens only: the unused ones cost a full-size
        output each."""
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens]
        tokens = range(self.num_mask_tokens)[chosen]
        mlps = self.output_hypernetworks_mlps
        classifiers = torch.stack([mlps[i](mask_out[:, i]) for i in tokens], dim=1)
        return self._upscale_and_classify(src, grid, classifiers)

    def _attend(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: updated tokens (B, T, C) and image locations
        (B, h*w, C). Without a mask prompt the image side starts as one shared copy."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat(
            [
                output_tokens.expand(batch, -1, -1),
                sparse_prompt_embeddings.to(output_tokens.dtype),
            ],
            dim=1,
        )
        src = None
        if image_side is None:
            src = image_embeddings.to(output_tokens.dtype) + dense_prompt_embeddings
        image_pe = image_pe.to(output_tokens.dtype)
        # Only the IoU and mask tokens are read afterwards, not the prompts' own.
        return self.transformer(src, image_pe, tokens, image_side, outputs=len(output_tokens))

    def _upscale_and_classify(
        self,
        src: torch.Tensor | FactoredKeys,
        grid: tuple[int, int],
        classifiers: torch.Tensor,
    ) -> torch.Tensor:
        """Apply `output_upscaling` to the image tokens (B or 1, h*w, C), on a `grid`
        (h, w), and every mask token's linear classifier (B, M, C/8) to the result:
        (B, M, 4h, 4w) logits.

        A transposed convolution whose kernel equals its stride is one matrix product per
        location; written so, with channels last throughout, this runs several times
        faster on a CPU than the convolution layers called directly, with the same weights.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        batch, (height, width) = len(classifiers), grid

        def subpixel(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
            # (C_in) -> (2, 2, C_out): sub-pixel row offset, column offset, channel
            c_in, c_out = conv.weight.shape[:2]
            return conv.weight.permute(2, 3, 1, 0).reshape(4 * c_out, c_in), conv.bias.repeat(4)

        def upsample(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
            return F.linear(x, *subpixel(conv)).view(*x.shape[:-1], 2, 2, -1)

        if isinstance(src, FactoredKeys):
            x = src.linear(*subpixel(up1), key=up1.weight)
        else:
            x = F.linear(src, *subpixel(up1))
        x = x.view(-1, height, width, 2, 2, up1.weight.shape[1]).expand(batch, -1, -1, -1, -1, -1)
        x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = act2(upsample(x, up2))  # (B, h, w, a, b, a2, b2, C/8)
        # One (locations x C/8) @ (C/8 x M) product per prompt (a broadcast matmul over
        # the five grid axes is 3x slower).
        logits = torch.bmm(x.reshape(batch, -1, x.shape[-1]), classifiers.transpose(1, 2))
        # Output pixel (4i + 2a + a2, 4j + 2b + b2) for each mask.
        logits = logits.view(batch, height, width, 2, 2, 2, 2, -1)
        logits = logits.permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, -1, 4 * height, 4 * width)
