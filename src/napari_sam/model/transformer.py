"""The two-way transformer of SAM's mask decoder: prompt tokens and image locations
attend to each other in turn."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to `dim // downsample_rate`.

    In the decoder one side is a handful of prompt tokens and the other 4096 image
    locations. When the short side has fewer tokens than a head has channels, projecting
    the long side is the expensive part, and it can be avoided exactly: the projection
    matrices are folded into the short side's tokens instead (see `_few_queries` and
    `_few_keys`), which more than halves the decoder's arithmetic for a click.
    """

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        overwrite_residual: bool = False,
        q_heads: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of q over (k, v), plus `residual` when given (one pass fewer over
        the 4096 image tokens when they are the queries). `overwrite_residual`: the sum
        may be written into `residual` (no gradient needed, nothing else reads it).
        `q_heads`: `head_projection(q, q_proj)` when the caller keeps it."""
        head_dim = self.q_proj.out_features // self.num_heads
        if q_heads is not None or k.shape[1] < head_dim < q.shape[1]:
            return self._few_keys(q, k, v, residual, overwrite_residual, q_heads)
        if q.shape[1] < head_dim < k.shape[1]:
            out = self._few_queries(q, k, v)
        else:
            out = self._projected(q, k, v)
        return out if residual is None else residual + out

    def head_projection(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, head_dim): `proj` applied, split into heads."""
        return self._heads(proj(x))

    def attend_to_projected(
        self, q: torch.Tensor, k_heads: torch.Tensor, v_heads: torch.Tensor
    ) -> torch.Tensor:
        """Attention of q over keys and values already projected by `head_projection`
        (an image's, kept from click to click): only the few queries are projected."""
        batch = q.shape[0]
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)),
            k_heads.expand(batch, -1, -1, -1),
            v_heads.expand(batch, -1, -1, -1),
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, q.shape[1], -1))

    def _projected(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Textbook form: project all three, attend per head, project back."""
        batch = max(q.shape[0], k.shape[0])  # one side may be shared by all prompts
        q, k, v = (t.expand(batch, -1, -1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few queries, many keys. Per head, q_h . (k W_k + b_k) = (q_h W_k) . k + const:
        the constant does not change a softmax over keys. And since attention weights sum
        to one, attn (v W_v + b_v) = (attn v) W_v + b_v. So the long side is only read
        twice, by (heads x queries)-row products, and never projected."""
        batch, queries, dim = q.shape
        heads = self.num_heads
        head_dim = self.q_proj.out_features // heads
        q_heads = self.q_proj(q).view(batch, queries, heads, head_dim)
        w_k = self.k_proj.weight.view(heads, head_dim, dim)
        folded = torch.einsum("bqhd,hdc->bhqc", q_heads, w_k) * head_dim**-0.5
        logits = folded.reshape(batch, heads * queries, dim) @ k.transpose(1, 2)
        pooled = logits.softmax(dim=-1) @ v  # (B, heads * queries, dim)
        w_v = self.v_proj.weight.view(heads, head_dim, dim)
        out = torch.einsum("bhqc,hdc->bqhd", pooled.view(batch, heads, queries, dim), w_v)
        out = out + self.v_proj.bias.view(heads, head_dim)
        return self.out_proj(out.reshape(batch, queries, heads * head_dim))

    def _few_keys(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None,
        overwrite_residual: bool = False,
        q_heads: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Many queries, few keys. Per head, (q W_q + b_q) . k_h = q . (W_q k_h) + b_q . k_h,
        and the output projection distributes over the weighted sum of values, so it is
        applied to the few values first: the long side meets two thin matrix products.
        With the queries' projection given (`q_heads`), the logits are a product of
        width head_dim instead of dim."""
        _, queries, dim = q.shape
        batch, keys = max(q.shape[0], k.shape[0]), k.shape[1]
        k, v = k.expand(batch, -1, -1), v.expand(batch, -1, -1)
        heads = self.num_heads
        head_dim = self.q_proj.out_features // heads
        scale = head_dim**-0.5
        k_heads = self.k_proj(k).view(batch, keys, heads, head_dim)
        v_heads = self.v_proj(v).view(batch, keys, heads, head_dim)
        # Logits laid out (B, heads, keys, queries): the softmax over the few keys then
        # runs along contiguous rows of queries, which vectorises.
        if q_heads is not None:
            logits = (k_heads.transpose(1, 2) * scale) @ q_heads.transpose(2, 3)
        else:
            w_q = self.q_proj.weight.view(heads, head_dim, dim)
            folded = torch.einsum("hdc,bkhd->bhkc", w_q, k_heads).reshape(batch, -1, dim)
            bias = torch.einsum("hd,bkhd->bhk", self.q_proj.bias.view(heads, head_dim), k_heads)
            # matmul, not baddbmm: q may be one image shared by all prompts (batch 1)
            logits = (folded * scale) @ q.transpose(1, 2) + bias.reshape(batch, -1, 1) * scale
        weights = logits.view(batch, heads, keys, queries).softmax(dim=2)
        w_o = self.out_proj.weight.view(-1, heads, head_dim)
        values_out = torch.einsum("bkhd,ohd->bhko", v_heads, w_o).reshape(batch, heads * keys, -1)
        weights = weights.view(batch, heads * keys, queries).transpose(1, 2)
        if residual is None:
            return torch.baddbmm(self.out_proj.bias, weights, values_out)
        # Each head's weights sum to one per query, so the output bias spread over the
        # heads' values adds it exactly once, and the residual rides in the same product.
        values_out = values_out + self.out_proj.bias / heads
        if overwrite_residual and residual.shape[0] == batch:
            return residual.baddbmm_(weights, values_out)  # saves a copy of 4096 tokens
        return torch.baddbmm(residual, weights, values_out)


class PreparedImage(NamedTuple):
    """An image side as the first decoder layer reads it, the same for every prompt
    without a mask input: the tokens, them plus the PE, and their projections by the
    first layer's two cross-attentions (keys and values for the tokens' attention, the
    queries of the image's), each (1, heads, h*w, head_dim). Kept from click to click,
    the projections turn the first layer's image-side products from the model width
    into one head's."""

    keys: torch.Tensor
    keys_with_pe: torch.Tensor
    k_heads: torch.Tensor
    v_heads: torch.Tensor
    q_heads: torch.Tensor


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        overwrite_keys: bool = False,
        prepared: PreparedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`overwrite_keys`: `keys` may be updated in place (the caller owns it and no
        gradient is needed); `prepared`: this block's view of `keys` when the caller
        keeps one (see `prepare`)."""
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt tokens themselves, which already
            # carry their positions; its output replaces them (no residual).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        to_image = self.cross_attn_token_to_image
        if prepared is None:
            # keys do not change until the last step: one sum serves both attentions
            keys_with_pe = keys + key_pe
            queries = queries + to_image(q, keys_with_pe, keys)
        else:
            keys_with_pe = prepared.keys_with_pe
            queries = queries + to_image.attend_to_projected(q, prepared.k_heads, prepared.v_heads)
        queries = self.norm2(queries)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        attended = self.cross_attn_image_to_token(
            keys_with_pe,
            q,
            queries,
            residual=keys,
            overwrite_residual=overwrite_keys,
            q_heads=None if prepared is None else prepared.q_heads,
        )
        return queries, self.norm4(attended)

    def prepare(self, keys: torch.Tensor, key_pe: torch.Tensor) -> PreparedImage:
        """This block's image-side projections of `keys` (1, h*w, C), to keep."""
        keys_with_pe = keys + key_pe
        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return PreparedImage(
            keys,
            keys_with_pe,
            to_image.head_projection(keys_with_pe, to_image.k_proj).contiguous(),
            to_image.head_projection(keys, to_image.v_proj).contiguous(),
            to_token.head_projection(keys_with_pe, to_token.q_proj).contiguous(),
        )

    def prepared_weights(self) -> list[torch.Tensor]:
        """The parameters `prepare` reads: a kept preparation is stale once they change."""
        projections = (
            self.cross_attn_token_to_image.k_proj,
            self.cross_attn_token_to_image.v_proj,
            self.cross_attn_image_to_token.q_proj,
        )
        return [t for proj in projections for t in (proj.weight, proj.bias)]


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor | None,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        prepared: PreparedImage | None = None,
        outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe: (B, C, h, w); point_embedding: (B, N, C);
        prepared: `prepare(image_embedding, image_pe)` when the caller keeps it (the
        embedding may then be None).
        Returns the updated tokens (B, N, C) and image locations (B, h*w, C);
        only the first `outputs` tokens when given (the last attention treats each token
        on its own, so the others' is skipped)."""
        keys = prepared.keys if prepared else image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            # Keys after the first layer are this call's own temporaries.
            owned = index > 0 and not torch.is_grad_enabled()
            first = prepared if index == 0 else None
            queries, keys = layer(queries, keys, point_embedding, key_pe, owned, first)
        queries, point_embedding = queries[:, :outputs], point_embedding[:, :outputs]
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys

    def prepare(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> PreparedImage:
        """What the first layer reads of one image side (1, C, h, w), for `forward`'s
        `prepared` when many prompts or clicks share it."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        return self.layers[0].prepare(keys, image_pe.flatten(2).transpose(1, 2))

    def prepared_weights(self) -> list[torch.Tensor]:
        """The parameters a `prepare`d image side depends on."""
        return self.layers[0].prepared_weights()
