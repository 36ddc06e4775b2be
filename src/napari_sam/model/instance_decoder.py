"""A dense decoder on SAM's image embedding for automatic instance segmentation (AIS).

The architecture is micro-sam's (Archit et al., "Segment Anything for Microscopy",
Nature Methods 2025): the convolutional decoder of a UNETR (Hatamizadeh et al. 2022)
reading only the final image embedding, so that it runs on an embedding the interactive
tools already computed. Parameter names are those of micro-sam's `decoder_state`, so its
checkpoints (`vit_b_lm`, `vit_l_lm`, `*_em_organelles`) load unchanged.

From a (B, C, h, w) embedding it predicts, at 16 x its resolution, three maps in [0, 1]:
foreground probability, distance to the object's centre and (inverted) distance to its
boundary, each distance normalised per object (0 at the centre / innermost point, 1 at
the rim and in the background). `automatic.instances` turns them into labels.

Optionally (`image_channels > 0`) the finest level reads the image itself instead of a
fourth upsampling of the embedding: the input block of torch-em's UNETR with skip
connections (`deconv4`, two convolutions on the image at the output resolution). An
embedding made of coarse tokens (tiny_cells': 8 px of a 256 px input) does not carry
object boundaries; the pixels do.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OUTPUTS", "InstanceDecoder", "instance_decoder_from_state"]

OUTPUTS = ("foreground", "center_distances", "boundary_distances")
_DEPTH = 3  # decoder levels of micro-sam's UNETR; features initial * 2**level


class _Upsample2x(nn.Module):
    """Doubling the resolution: bilinear then a 1x1 convolution (parameters `conv.*`), or a
    2x2 transposed convolution (parameters `block.*`), as micro-sam's two variants."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        self.transposed = transposed
        if transposed:
            self.block = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return self.block(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class _Conv3x3(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _UpBlock(nn.Module):
    """Upsample x2, 3x3 convolution, batch norm, ReLU (micro-sam's `deconv*` blocks)."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _Upsample2x(in_channels, out_channels, transposed),
            _Conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _DoubleConv(nn.Module):
    """Two (instance norm, 3x3 convolution, ReLU); instance norm without parameters."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Levels(nn.Module):
    """The U-Net decoder's levels: upsample, join the skip features, two convolutions."""

    def __init__(self, features: list[int], transposed: bool) -> None:
        super().__init__()
        pairs = list(itertools.pairwise(features))
        self.blocks = nn.ModuleList(_DoubleConv(c_in, c_out) for c_in, c_out in pairs)
        self.samplers = nn.ModuleList(_Upsample2x(i, o, transposed) for i, o in pairs)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips, strict=True):
            x = sampler(x)
            # The published weights were trained joining the *middle* channels of the
            # skip features (torch-em crops every dimension, channels included, to the
            # upsampled tensor's shape); the same here, or the weights mean nothing.
            start = (skip.shape[1] - x.shape[1]) // 2
            x = block(torch.cat([x, skip[:, start : start + x.shape[1]]], dim=1))
        return x


class InstanceDecoder(nn.Module):
    """micro-sam's AIS decoder: (B, embed_dim, h, w) embedding -> (B, 3, 16h, 16w) maps
    in [0, 1] (`OUTPUTS` order), float32.

    embed_dim: channels of the image embedding (256 for Meta's models, 128 for
    tiny_cells). initial_features: channels of the finest level (micro-sam: 64); the
    levels have initial * 2**k, k = 3..0. transposed: upsample with transposed
    convolutions instead of bilinear + 1x1 (micro-sam's checkpoints use either).
    image_channels: 0 (micro-sam's), or the channels of the image the finest level
    also reads (3: RGB normalised as the encoder's input, at (16h, 16w); see the module
    docstring and `predictor.head_image`).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        initial_features: int = 64,
        transposed: bool = False,
        image_channels: int = 0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.initial_features = initial_features
        self.transposed = transposed
        self.image_channels = image_channels
        features = [initial_features * 2**level for level in range(_DEPTH, -1, -1)]
        self.deconv1 = _UpBlock(embed_dim, features[0], transposed)
        self.deconv2 = _UpBlock(features[0], features[1], transposed)
        self.deconv3 = _UpBlock(features[1], features[2], transposed)
        if image_channels:
            self.deconv4 = _DoubleConv(image_channels, features[3])
        else:
            self.deconv4 = _UpBlock(features[2], features[3], transposed)
        self.base = _DoubleConv(embed_dim, features[0])
        self.decoder = _Levels(features, transposed)
        self.deconv_out = _Upsample2x(features[3], features[3], transposed)
        self.decoder_head = _DoubleConv(2 * features[3], features[3])
        self.out_conv = nn.Conv2d(features[3], len(OUTPUTS), 1)

    def forward(self, embedding: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """embedding (B, embed_dim, h, w); image (B, image_channels, 16h, 16w) for a
        decoder with an image path, else None. Raises ValueError when one is missing or
        given for nothing."""
        if (image is None) != (self.image_channels == 0):
            raise ValueError(
                "This instance decoder reads the image too: pass it (B, "
                f"{self.image_channels}, 16h, 16w)." if self.image_channels else
                "This instance decoder reads the embedding alone: pass no image."
            )  # fmt: skip
        z9 = self.deconv1(embedding)  # 2x
        z6 = self.deconv2(z9)  # 4x
        z3 = self.deconv3(z6)  # 8x
        z0 = self.deconv4(z3 if image is None else image)  # 16x
        x = self.decoder(self.base(embedding), [z9, z6, z3])  # 8x
        x = torch.cat([self.deconv_out(x), z0], dim=1)  # 16x
        return torch.sigmoid(self.out_conv(self.decoder_head(x)))


def instance_decoder_from_state(
    state: Mapping[str, torch.Tensor], source: str = "decoder_state"
) -> InstanceDecoder:
    """An `InstanceDecoder` holding `state` (micro-sam's `decoder_state` layout), its
    widths and upsampling variant read from the tensor shapes and names; on the CPU,
    in eval mode. Raises ValueError when `state` is not such a decoder (the message says
    which weights are missing, unexpected or of another shape)."""
    try:
        embed_dim = int(state["base.block.1.weight"].shape[1])
        initial = int(state["out_conv.weight"].shape[1])
    except (KeyError, AttributeError, IndexError):
        raise ValueError(
            f"{source} is not an instance segmentation decoder: it lacks micro-sam's "
            "'base.block.1.weight' / 'out_conv.weight'."
        ) from None
    transposed = any(k.startswith("deconv1.block.0.block.") for k in state)
    # An image path's deconv4 is two convolutions (block.1, block.4) on the image.
    image_path = "deconv4.block.4.weight" in state and "deconv4.block.1.weight" in state
    image_channels = int(state["deconv4.block.1.weight"].shape[1]) if image_path else 0
    decoder = InstanceDecoder(embed_dim, initial, transposed, image_channels)
    expected = decoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{source} does not fit micro-sam's instance decoder (embedding {embed_dim} "
            f"channels, {initial} initial features): missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {reshaped[:3]}."
        )
    decoder.load_state_dict(dict(state), strict=True)
    return decoder.eval()
