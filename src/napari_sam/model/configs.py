"""Architecture hyper-parameters of SAM models.

The official values (vit_b/l/h) come from Meta's published checkpoints; any other
combination (small models for tests and the bundled model) is a `SamConfig` too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Normalisation of 0..255 RGB input; not stored in the checkpoints.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to build a `Sam` model whose state_dict matches a checkpoint."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"encoder_embed_dim ({self.encoder_embed_dim}) must be divisible by "
                f"encoder_num_heads ({self.encoder_num_heads})"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"encoder_global_attn_indexes {bad} lie outside the {self.encoder_depth} blocks"
            )
        # Lists from JSON or users are accepted; the dataclass stays hashable.
        object.__setattr__(
            self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes)
        )
        object.__setattr__(self, "pixel_mean", tuple(self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(self.pixel_std))

    @property
    def embedding_size(self) -> int:
        """Side length of the image embedding grid (64 for the standard 1024 input)."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        """Plain-data form, for saving next to a checkpoint."""
        data = asdict(self)
        data["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return data


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
}

# The bundled offline model (see napari_sam.training.bundled): 256 px input, 8 px
# patches (the same 32 x 32 token grid as vit_b), about 2.3 M parameters.
TINY_CELLS = SamConfig(
    img_size=256,
    patch_size=8,
    encoder_embed_dim=128,
    encoder_depth=6,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(2, 5),
    window_size=8,
    prompt_embed_dim=128,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)


def get_config(name_or_config: str | SamConfig) -> SamConfig:
    """Return the named official config, or pass a `SamConfig` through."""
    if isinstance(name_or_config, SamConfig):
        return name_or_config
    try:
        return CONFIGS[name_or_config]
    except KeyError:
        raise ValueError(
            f"Unknown model config {name_or_config!r}; choose one of {sorted(CONFIGS)} "
            "or pass a SamConfig."
        ) from None
