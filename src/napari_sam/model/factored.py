"""The decoder's image side, kept factored for clicks.

The two-way transformer changes its image tokens (64 x 64 of them for the official
models) only by adding attention outputs,
each a per-location mix of a few vectors (one per head and prompt token), and by
LayerNorms, which rescale and shift each location. So after any layer the tokens are

    keys(p) = scale(p) * (embedding(p) * gain) + coef(p) @ basis

with the embedding the same for every click on an image, one scalar `scale` and a few
dozen coefficients per location, and a basis of a few dozen vectors per prompt. Whatever
the decoder computes from the tokens is a projection `W keys(p)`: of the embedding's
part it is `(embedding * gain) @ W.T`, which depends only on the image and the weights
and is kept from click to click (`ImageSide`); of the rest it is `coef @ (basis @ W.T)`,
far narrower than the model width. This is the same arithmetic in another order, exact
up to rounding; it only applies without autograd and without a mask prompt, when the
image side is shared by every click.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def _per_head(prompts: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(B, H, T, k) @ (1, H, k, n) -> (B, H, T, n), without the copy of `image` per
    prompt that a broadcasting matmul makes: the prompts are stacked per head."""
    batch, heads, tokens, width = prompts.shape
    if batch == 1:
        return prompts @ image
    stacked = prompts.transpose(0, 1).reshape(heads, batch * tokens, width) @ image[0]
    return stacked.view(heads, batch, tokens, -1).transpose(0, 1)


@dataclass
class ImageSide:
    """The decoder's image side before its first layer, (1, h*w, C) tokens of the
    embedding plus the no-mask prompt and its positional encoding, with the projections
    of them that clicks ask for, computed once each."""

    keys: torch.Tensor
    pe: torch.Tensor
    _projections: dict = field(default_factory=dict)

    def projection(
        self,
        weight: torch.Tensor,
        gain: torch.Tensor | None,
        tokens: str = "keys",
        key: object = None,
        heads: int = 0,
    ) -> torch.Tensor:
        """`(keys * gain) @ weight.T`, (1, h*w, out); `tokens` "pe" projects the PE
        instead and "keys+pe" their sum (gain None). With `heads`, laid out for
        products per head: (1, heads, out/heads, h*w). Kept for `key` (an object;
        default: the weight tensor), so callers pass the same gain for the same weight
        (they do: each weight reads one layer's tokens)."""
        owner = weight if key is None else key
        # The owner is held with its projection: an id is only unique while it lives.
        kept = self._projections.get((id(owner), tokens, heads))
        if kept is not None and kept[0] is owner:
            return kept[1]
        x = self.pe if tokens == "pe" else self.keys
        if tokens == "keys+pe":
            x = x + self.pe
        if gain is not None:
            x = x * gain
        out = x @ weight.t()
        if heads:
            out = out.view(1, out.shape[1], heads, -1).permute(0, 2, 3, 1).contiguous()
        self._projections[id(owner), tokens, heads] = owner, out
        return out


@dataclass
class FactoredKeys:
    """Image tokens `scale * (image.keys * gain) + coef @ basis` (module docstring).

    scale: (B or 1, N, 1) or None for 1; coef: (B, N, M) and basis: (B, M, C), or None
    before any prompt has been added; dense: the tokens themselves, (B or 1, N, C), while
    a later LayerNorm still needs their statistics.
    """

    image: ImageSide
    gain: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> FactoredKeys:
        """The tokens of the prompts `rows` of a batch."""
        if self.coef is None:
            return self

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None or t.shape[0] == 1 else t[rows]

        return FactoredKeys(
            self.image, self.gain, pick(self.scale), pick(self.coef), pick(self.basis)
        )

    def linear(
        self, weight: torch.Tensor, bias: torch.Tensor | None, key: object = None
    ) -> torch.Tensor:
        """`keys @ weight.T + bias`, (B, N, out), without forming the keys; `key` names
        a weight made afresh for each call (see `ImageSide.projection`)."""
        out = self.image.projection(weight, self.gain, key=key)
        if self.scale is not None:
            out = out * self.scale
        if self.coef is not None:
            out = torch.baddbmm(out, self.coef, self.basis @ weight.t())
        return out if bias is None else out + bias

    def head_logits(self, proj: nn.Linear, heads: torch.Tensor) -> torch.Tensor:
        """Per head h, `heads[:, h] . proj(keys + pe)_h` for every location: (B, H, T, N)
        for `heads` (B, H, T, d), the split of `proj`'s output the attention uses."""
        batch, num_heads, _, head_dim = heads.shape
        kept = self.image.projection
        weight = proj.weight
        if self.scale is None:  # the first layer: one kept product, PE included
            logits = _per_head(heads, kept(weight, None, "keys+pe", heads=num_heads))
        else:
            logits = _per_head(heads, kept(weight, self.gain, heads=num_heads))
            logits = torch.addcmul(
                _per_head(heads, kept(weight, None, "pe", heads=num_heads)),
                logits,
                self.scale.view(-1, 1, 1, self.scale.shape[1]),
            )
        if self.coef is not None:
            basis = self.basis @ proj.weight.t()  # (B, M, H*d)
            mixed = heads @ basis.view(batch, -1, num_heads, head_dim).permute(0, 2, 3, 1)
            logits = logits + (mixed.reshape(batch, -1, mixed.shape[-1]) @ self.coef.mT).view(
                logits.shape
            )
        bias = heads @ proj.bias.view(num_heads, head_dim, 1)  # varies over tokens
        return logits + bias

    def pooled(self, proj: nn.Linear, weights: torch.Tensor) -> torch.Tensor:
        """`sum_p weights[..., p] proj(keys(p))_h` per head: (B, H, T, d) for attention
        weights (B, H, T, N) that sum to one over the locations."""
        batch, num_heads, tokens, locations = weights.shape
        head_dim = proj.out_features // num_heads
        kept = self.image.projection(proj.weight, self.gain, heads=num_heads).mT
        scaled = weights if self.scale is None else weights * self.scale.view(-1, 1, 1, locations)
        out = _per_head(scaled, kept)
        if self.coef is not None:
            mixed = weights.reshape(batch, -1, locations) @ self.coef  # (B, H*T, M)
            basis = (self.basis @ proj.weight.t()).view(batch, -1, num_heads, head_dim)
            out = out + mixed.view(batch, num_heads, tokens, -1) @ basis.transpose(1, 2)
        return out + proj.bias.view(num_heads, 1, head_dim)

    def add_and_norm(
        self,
        coef: torch.Tensor,
        basis: torch.Tensor,
        norm: nn.LayerNorm,
        keep_dense: bool,
    ) -> FactoredKeys:
        """`norm(keys + coef @ basis)`, factored. The LayerNorm's statistics come from
        the summed tokens, formed here in place of `dense`; `keep_dense` keeps the
        normalised tokens too, for the next layer's statistics."""
        if self.dense is not self.image.keys and self.dense.shape[0] == coef.shape[0]:
            summed = self.dense.baddbmm_(coef, basis)  # this call's own temporary
        else:
            summed = torch.baddbmm(self.dense, coef, basis)
        gain, shift = norm.weight, norm.bias
        # (torch.var_mean over the last axis is ten times slower than a LayerNorm)
        dense, mean, inv_std = torch.native_layer_norm(
            summed, summed.shape[-1:], gain, shift, norm.eps
        )
        batch = summed.shape[0]
        # norm(x) = (x - mean) * inv_std * gain + shift, term by term
        columns = [coef, -mean]
        rows = [basis * gain, gain.expand(batch, 1, -1), shift.expand(batch, 1, -1)]
        if self.coef is not None:
            columns.insert(0, self.coef)
            rows.insert(0, self.basis * gain)
        columns = [torch.cat(columns, dim=-1) * inv_std, torch.ones_like(mean)]
        return FactoredKeys(
            self.image,
            gain if self.gain is None else self.gain * gain,
            inv_std if self.scale is None else self.scale * inv_std,
            torch.cat(columns, dim=-1),
            torch.cat(rows, dim=1),
            dense if keep_dense else None,
        )
