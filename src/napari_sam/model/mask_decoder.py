"""SAM's mask decoder: prompt tokens + image embedding -> mask logits and predicted IoU."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return low-res mask logits (B, M, 4h, 4w) and predicted IoU (B, M), with M = 3
        for `multimask_output` and 1 otherwise.

        image_embeddings: (1 or B, C, h, w), shared by all B prompts when its batch is 1.
        """
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' logits (B, 4, 4h, 4w) and IoU predictions (B, 4)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat(
            [
                output_tokens.expand(batch, -1, -1),
                sparse_prompt_embeddings.to(output_tokens.dtype),
            ],
            dim=1,
        )
        src = image_embeddings.to(output_tokens.dtype) + dense_prompt_embeddings
        hs, src = self.transformer(src, image_pe.to(src.dtype), tokens)
        iou_out, mask_out = hs[:, 0], hs[:, 1 : 1 + self.num_mask_tokens]

        _, channels, height, width = dense_prompt_embeddings.shape
        features = self.output_upscaling(src.transpose(1, 2).reshape(-1, channels, height, width))
        classifiers = torch.stack(
            [mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = features.shape
        masks = (classifiers @ features.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_out)
