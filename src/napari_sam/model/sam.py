"""`Sam`: the three networks together, plus the input normalisation they were trained with."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .configs import SamConfig, get_config
from .factored import ImageSide
from .image_encoder import ImageEncoderViT
from .instance_decoder import InstanceDecoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

# Image sides kept (see Sam._unmasked_image_side), at most this many and this many
# bytes: a side with its projections measured 8.5x its embedding (4.5 MB for
# tiny_cells, 36 MB for Meta's models), so tiny_cells keeps 4 and Meta's models 2:
# enough for clicks alternating between neighbouring tiles.
IMAGE_SIDES_KEPT = 4
IMAGE_SIDES_BYTES = 80e6


class Sam(nn.Module):
    """Segment Anything. Its state_dict has the layout of Meta's checkpoints, so
    `load_state_dict(official, strict=True)` works unchanged."""

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        config: SamConfig | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.config = config
        # Not part of the checkpoints: persistent=False keeps the state_dict official.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # The last few embeddings' image sides, newest last (see _unmasked_image_side).
        self._image_sides: OrderedDict[int, tuple] = OrderedDict()
        # Optional dense head for automatic instance segmentation (see
        # `attach_instance_decoder`); None keeps the state_dict exactly Meta's.
        self.instance_decoder: InstanceDecoder | None = None
        # The grid method's thresholds for these weights, from their zoo entry.
        self.grid_defaults: dict[str, float] = {}
        # The instance head's thresholds for these weights, from their zoo entry.
        self.ais_defaults: dict[str, float] = {}

    def attach_instance_decoder(self, decoder: InstanceDecoder | None) -> None:
        """Give the model an instance segmentation head (or remove it with None). It
        moves with the model (`to`, `eval`); its weights appear in `state_dict()` under
        `instance_decoder.`. Raises ValueError when it reads another embedding width."""
        if decoder is not None and decoder.embed_dim != self.prompt_encoder.embed_dim:
            raise ValueError(
                f"The instance decoder reads {decoder.embed_dim}-channel embeddings; this "
                f"model's have {self.prompt_encoder.embed_dim}."
            )
        if decoder is None:
            self._modules.pop("instance_decoder", None)
            self.__dict__["instance_decoder"] = None
            return
        self.instance_decoder = decoder.to(self.device).train(self.training)

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) RGB in 0..255 with max(h, w) <= img_size -> normalised and
        zero-padded at the bottom and right to (B, 3, img_size, img_size)."""
        normed = (image.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        height, width = normed.shape[-2:]
        return F.pad(normed, (0, self.img_size - width, 0, self.img_size - height))

    def encode_image(
        self, image: torch.Tensor, on_block: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Preprocess and embed, in the image encoder's own dtype; returns float32,
        stored channels-last. `on_block(done, total)` reports progress after each
        encoder block.

        Channels-last because the mask decoder reads the embedding as (h*w, C) tokens:
        stored so, every click's token arithmetic runs on contiguous memory instead of
        mixing layouts (each mixed 4096 x 256 add or copy costs about ten times more)."""
        dtype = self.image_encoder.patch_embed.proj.weight.dtype
        features = self.image_encoder(self.preprocess(image).to(dtype), on_block).float()
        return features.contiguous(memory_format=torch.channels_last)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the model's input frame -> (low-res logits (B, M, h, w), IoU (B, M)),
        (h, w) = `prompt_encoder.mask_input_size` (256 x 256 for Meta's models)."""
        image_pe, sparse, dense, image_side = self._decoder_inputs(
            image_embeddings, points, boxes, mask_input
        )
        return self.mask_decoder(
            image_embeddings, image_pe, sparse, dense, multimask_output, image_side
        )

    def prepare_decoder(self, image_embeddings: torch.Tensor) -> None:
        """Compute now what every click on this (1, C, h, w) embedding reuses (see
        `_unmasked_image_side`), by decoding one point at the image centre, so that the
        first click is as fast as the next: for the worker thread that made the
        embedding. Call it in the grad mode the clicks will use (inference mode)."""
        centre = torch.full((1, 1, 2), self.img_size / 2, device=image_embeddings.device)
        labels = torch.ones((1, 1), dtype=torch.int64, device=image_embeddings.device)
        self.decode(image_embeddings, (centre, labels))

    def decode_iou_first(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        min_iou: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`decode` for large prompt batches: (IoU (B, M), indices of the prompts with
        an output above `min_iou` (K,), their low-res logits (K, M, h, w)); the
        others' masks are never computed."""
        image_pe, sparse, dense, image_side = self._decoder_inputs(
            image_embeddings, points, boxes, mask_input
        )
        return self.mask_decoder.predict_iou_first(
            image_embeddings, image_pe, sparse, dense, multimask_output, min_iou, image_side
        )

    def _decoder_inputs(self, image_embeddings, points, boxes, mask_input) -> tuple:
        """(dense PE, sparse tokens, dense prompt, image side or None) for the decoder."""
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        dense_pe = self.prompt_encoder.get_dense_pe()
        image_side = self._unmasked_image_side(image_embeddings, dense, dense_pe, mask_input)
        return dense_pe, sparse, dense, image_side

    def _unmasked_image_side(
        self,
        image_embeddings: torch.Tensor,
        dense: torch.Tensor,
        dense_pe: torch.Tensor,
        mask_input: torch.Tensor | None,
    ) -> ImageSide | None:
        """The decoder's image side before its first layer, for prompts without a mask
        input: embedding + no-mask embedding and the dense PE, as (1, h*w, C) tokens,
        with the projections of them that clicks ask for (`ImageSide`). All are the same
        for every click on one image, so they are kept for the last few embeddings
        seen (`IMAGE_SIDES_KEPT`, `IMAGE_SIDES_BYTES`: clicks that alternate between
        the tiles of a view find theirs again), each held so that its memory cannot be
        reused by another, until it, the decoder's weights or the grad mode change.
        None when autograd is recording or a mask input makes the image side
        prompt-specific."""
        if mask_input is not None or image_embeddings.shape[0] != 1 or torch.is_grad_enabled():
            return None
        weights = [self.prompt_encoder.no_mask_embed.weight, *self.mask_decoder.parameters()]
        # Inference tensors keep no version counter; they can only be changed in place
        # inside inference mode, which nothing here does to an embedding.
        versions = (
            None if image_embeddings.is_inference() else image_embeddings._version,
            *((w.data_ptr(), w._version) for w in weights),
            dense_pe.data_ptr(),
            torch.is_inference_mode_enabled(),
        )
        cached = self._kept_image_side(image_embeddings)
        if cached is None or cached[1] != versions:
            src = image_embeddings.to(dense.dtype) + dense
            side = ImageSide(
                src.flatten(2).transpose(1, 2), dense_pe.to(src.dtype).flatten(2).transpose(1, 2)
            )
            cached = (image_embeddings, versions, side)
            self._image_sides[id(image_embeddings)] = cached
        self._image_sides.move_to_end(id(image_embeddings))
        side_bytes = 9 * image_embeddings.nelement() * image_embeddings.element_size()
        kept = min(IMAGE_SIDES_KEPT, max(1, int(IMAGE_SIDES_BYTES // side_bytes)))
        while len(self._image_sides) > kept:
            self._image_sides.popitem(last=False)
        return cached[2]

    def _kept_image_side(self, image_embeddings: torch.Tensor) -> tuple | None:
        """(embedding, versions, ImageSide) kept for this very tensor, or None. Keyed by
        id(): a kept tensor is held, so its id cannot be given to another meanwhile."""
        cached = self._image_sides.get(id(image_embeddings))
        return cached if cached is not None and cached[0] is image_embeddings else None

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits -> logits at the original image size: upscale to the padded
        input, drop the padding, then resize to the original (skipped when equal)."""
        masks = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(input_size) != tuple(original_size):
            masks = F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
        return masks


def build_sam(config: SamConfig | str = "vit_b") -> Sam:
    """A randomly initialised `Sam` of the given config (a `SamConfig` or an official name)."""
    config = get_config(config)
    grid = config.embedding_size
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
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=dim,
                num_heads=config.decoder_num_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
        config=config,
    )
