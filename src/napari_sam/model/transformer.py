"""The two-way transformer of SAM's mask decoder: prompt tokens and image locations
attend to each other in turn."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock
from .factored import FactoredKeys, ImageSide


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
    ) -> torch.Tensor:
        """Attention of q over (k, v), plus `residual` when given (one pass fewer over
        the 4096 image tokens when they are the queries). `overwrite_residual`: the sum
        may be written into `residual` (no gradient needed, nothing else reads it)."""
        head_dim = self.q_proj.out_features // self.num_heads
        if k.shape[1] < head_dim < q.shape[1]:
            return self._few_keys(q, k, v, residual, overwrite_residual)
        if q.shape[1] < head_dim < k.shape[1]:
            out = self._few_queries(q, k, v)
        else:
            out = self._projected(q, k, v)
        return out if residual is None else residual + out

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
    ) -> torch.Tensor:
        """Many queries, few keys. Per head, (q W_q + b_q) . k_h = q . (W_q k_h) + b_q . k_h,
        and the output projection distributes over the weighted sum of values, so it is
        applied to the few values first: the long side meets two thin matrix products."""
        _, queries, dim = q.shape
        batch, keys = max(q.shape[0], k.shape[0]), k.shape[1]
        k, v = k.expand(batch, -1, -1), v.expand(batch, -1, -1)
        heads = self.num_heads
        head_dim = self.q_proj.out_features // heads
        scale = head_dim**-0.5
        k_heads = self.k_proj(k).view(batch, keys, heads, head_dim)
        v_heads = self.v_proj(v).view(batch, keys, heads, head_dim)
        w_q = self.q_proj.weight.view(heads, head_dim, dim)
        folded = torch.einsum("hdc,bkhd->bhkc", w_q, k_heads).reshape(batch, -1, dim) * scale
        key_bias = torch.einsum("hd,bkhd->bhk", self.q_proj.bias.view(heads, head_dim), k_heads)
        # Logits laid out (B, heads, keys, queries): the softmax over the few keys then
        # runs along contiguous rows of queries, which vectorises.
        # matmul, not baddbmm: q may be one image shared by all prompts (batch 1)
        logits = folded @ q.transpose(1, 2) + key_bias.reshape(batch, -1, 1) * scale
        weights = logits.view(batch, heads, keys, queries).softmax(dim=2)
        values_out = self._values_out(v_heads)
        weights = weights.view(batch, heads * keys, queries).transpose(1, 2)
        if residual is None:
            return torch.bmm(weights, values_out)
        if overwrite_residual and residual.shape[0] == batch:
            return residual.baddbmm_(weights, values_out)  # saves a copy of 4096 tokens
        return torch.baddbmm(residual, weights, values_out)

    def _values_out(self, v_heads: torch.Tensor) -> torch.Tensor:
        """(B, keys, heads, head_dim) projected values -> (B, heads * keys, C): each
        head's values through its slice of the output projection, so that a query's
        output is its attention weights times these rows. Each head's weights sum to one,
        so the output bias spread over the heads' rows adds it exactly once."""
        batch, keys, heads, head_dim = v_heads.shape
        w_o = self.out_proj.weight.view(-1, heads, head_dim)
        values_out = torch.einsum("bkhd,ohd->bhko", v_heads, w_o).reshape(batch, heads * keys, -1)
        return values_out + self.out_proj.bias / heads

    def attend_to_image(self, q: torch.Tensor, image: FactoredKeys) -> torch.Tensor:
        """Few tokens q (B, T, C) attending to factored image tokens (+ their PE as keys):
        only the few queries are projected (see `FactoredKeys`)."""
        batch, tokens, _ = q.shape
        head_dim = self.q_proj.out_features // self.num_heads
        heads = self._heads(self.q_proj(q)) * head_dim**-0.5
        weights = image.head_logits(self.k_proj, heads).softmax(dim=-1)
        out = image.pooled(self.v_proj, weights)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    def image_weights(
        self, image: FactoredKeys, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factored image tokens (+ PE) attending to few tokens (k, v), (B, T, C). The
        output at location p is `weights[:, p] @ rows`: returns weights (B, N, heads*T)
        and rows (B, heads*T, C), for `FactoredKeys.add_and_norm`."""
        batch, tokens, _ = k.shape
        heads, head_dim = self.num_heads, self.q_proj.out_features // self.num_heads
        k_heads = self._heads(self.k_proj(k)) * head_dim**-0.5
        # (B, heads, T, N): the softmax over the few tokens runs along contiguous rows
        weights = image.head_logits(self.q_proj, k_heads).softmax(dim=2)
        rows = self._values_out(self.v_proj(v).view(batch, tokens, heads, head_dim))
        return weights.view(batch, heads * tokens, -1).transpose(1, 2), rows


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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`overwrite_keys`: `keys` may be updated in place (the caller owns it and no
        gradient is needed)."""
        queries = self._attend_tokens(queries, query_pe)

        # keys do not change until the last step: one sum serves both cross-attentions
        keys_with_pe = keys + key_pe
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, keys_with_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        attended = self.cross_attn_image_to_token(
            keys_with_pe, q, queries, residual=keys, overwrite_residual=overwrite_keys
        )
        return queries, self.norm4(attended)

    def forward_factored(
        self,
        queries: torch.Tensor,
        keys: FactoredKeys,
        query_pe: torch.Tensor,
        keep_dense: bool,
    ) -> tuple[torch.Tensor, FactoredKeys]:
        """`forward` on factored image tokens (see `FactoredKeys`); `keep_dense`: the
        next layer's normalisation needs the image tokens themselves."""
        queries = self._attend_tokens(queries, query_pe)
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.attend_to_image(q, keys))
        queries = self.norm3(queries + self.mlp(queries))
        weights, rows = self.cross_attn_image_to_token.image_weights(
            keys, queries + query_pe, queries
        )
        return queries, keys.add_and_norm(weights, rows, self.norm4, keep_dense)

    def _attend_tokens(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt tokens themselves, which already
            # carry their positions; its output replaces them (no residual).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        return self.norm1(queries)


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
        image_side: ImageSide | None = None,
        outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | FactoredKeys]:
        """image_embedding, image_pe: (B, C, h, w); point_embedding: (B, N, C).
        Returns the updated tokens (B, N, C) and image locations (B, h*w, C); only the
        first `outputs` tokens when given (the last attention treats each token on its
        own, so the others' is skipped).

        image_side: the embedding's tokens and PE kept by the caller for many prompts,
        without autograd (the embedding may then be None): the image locations are
        then computed and returned as `FactoredKeys`, which costs a fraction."""
        if image_side is not None:
            return self._forward_factored(image_side, point_embedding, outputs)
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            # Keys after the first layer are this call's own temporaries.
            owned = index > 0 and not torch.is_grad_enabled()
            queries, keys = layer(queries, keys, point_embedding, key_pe, owned)
        queries, point_embedding = queries[:, :outputs], point_embedding[:, :outputs]
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys

    def _forward_factored(
        self, image: ImageSide, point_embedding: torch.Tensor, outputs: int | None
    ) -> tuple[torch.Tensor, FactoredKeys]:
        if torch.is_grad_enabled():  # it updates its temporaries in place
            raise RuntimeError("a kept image side is for inference: pass none under autograd")
        keys = FactoredKeys(image, dense=image.keys)
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            keep_dense = index < len(self.layers) - 1
            queries, keys = layer.forward_factored(queries, keys, point_embedding, keep_dense)
        queries, point_embedding = queries[:, :outputs], point_embedding[:, :outputs]
        attended = self.final_attn_token_to_image.attend_to_image(queries + point_embedding, keys)
        return self.norm_final_attn(queries + attended), keys
