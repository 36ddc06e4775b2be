"""Helpers shared by tests and benchmarks: seeded random weights, Meta's reference model."""

from __future__ import annotations

import math
from functools import partial

import torch

from napari_sam.model import SamConfig, build_sam

TINY = SamConfig(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    img_size=256,
    patch_size=16,
    window_size=5,  # 16x16 grid: windows need padding, as 64/14 does in vit_b
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
)


@torch.no_grad()
def randomize_(
    model: torch.nn.Module, seed: int = 0, *, all_norms: bool = False
) -> torch.nn.Module:
    """Fill every parameter and buffer with seeded values of a sensible scale, so that no
    path (relative positions, position embedding, biases) is silently zero.

    all_norms: give every LayerNorm a gain near 1, also the mask decoder's upscaling
    and the mask input's downscaling ones, which the name rule below leaves at 0.1 x
    noise. With those small gains the upscaled features the decoder reads are tiny next
    to its biases: logits nearly constant over the image, most masks all-full or empty.
    Off by default: the other tests' expectations were made on those weights."""
    generator = torch.Generator().manual_seed(seed)
    norms = {
        f"{module_name}.{part}"
        for module_name, module in model.named_modules()
        if all_norms and "LayerNorm" in type(module).__name__
        for part in ("weight", "bias")
    }
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator)
        if ".norm" in name or "neck.1" in name or "neck.3" in name or name in norms:
            values = 1.0 + 0.1 * noise if name.endswith("weight") else 0.05 * noise
        elif tensor.ndim >= 2 and "rel_pos" not in name and "pos_embed" not in name:
            fan_in = math.prod(tensor.shape[1:])
            values = noise / math.sqrt(fan_in)
        else:
            values = 0.1 * noise
        tensor.copy_(values.to(tensor.dtype))
    return model


def build_reference(config: SamConfig) -> torch.nn.Module:
    """Meta's `segment_anything` Sam with the same architecture as our `config`."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = config.img_size // config.patch_size
    dim = config.prompt_embed_dim
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=config.window_size,
            global_attn_indexes=config.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    ).eval()


def twin_models(config: SamConfig, seed: int = 0, *, all_norms: bool = False):
    """(ours, Meta's) holding identical seeded random weights (see `randomize_`)."""
    reference = randomize_(build_reference(config), seed, all_norms=all_norms)
    ours = build_sam(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """Meta's `segment_anything` Sam holding a copy of our `model`'s weights (e.g. the
    bundled trained model, whose masks depend on the prompt, unlike random weights')."""
    reference = build_reference(model.config)
    sam_only = {k: v for k, v in model.state_dict().items() if not k.startswith("instance_")}
    reference.load_state_dict(sam_only, strict=True)  # Meta's Sam has no instance head
    return reference.to(model.device)
