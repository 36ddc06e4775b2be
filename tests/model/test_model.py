"""The model's own pieces: configs, windows, relative positions, chunked attention,
dtypes and devices."""

import pytest
import torch
import torch.nn.functional as F

# Meta's segment_anything is the reference: missing, these tests fail, never skip.
from segment_anything.modeling.image_encoder import Attention as MetaAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.modeling.transformer import Attention as MetaDecoderAttention

import napari_sam.model.image_encoder as image_encoder
from napari_sam.model import CONFIGS, SamConfig, build_sam, get_config
from napari_sam.model.factored import FactoredKeys, ImageSide
from napari_sam.model.image_encoder import (
    Attention,
    merge_windows,
    relative_position_table,
    split_windows,
)
from napari_sam.model.sam import IMAGE_SIDES_KEPT
from tests.reference import TINY, build_reference


def test_official_configs_hold_the_published_values():
    assert CONFIGS["vit_b"].encoder_embed_dim == 768 and CONFIGS["vit_b"].encoder_depth == 12
    assert CONFIGS["vit_l"].encoder_global_attn_indexes == (5, 11, 17, 23)
    assert CONFIGS["vit_h"].encoder_num_heads == 16 and CONFIGS["vit_h"].encoder_depth == 32
    assert all(c.embedding_size == 64 and c.window_size == 14 for c in CONFIGS.values())
    assert get_config("vit_l") is CONFIGS["vit_l"]


def test_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="vit_q"):
        get_config("vit_q")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SamConfig(img_size=100, patch_size=16)
    with pytest.raises(ValueError, match="divisible"):
        SamConfig(encoder_embed_dim=100, encoder_num_heads=12)
    with pytest.raises(ValueError, match="outside"):
        SamConfig(encoder_depth=4, encoder_global_attn_indexes=(5,))


def test_config_round_trips_through_plain_data():
    data = TINY.to_dict()
    assert SamConfig(**data) == TINY
    assert isinstance(data["encoder_global_attn_indexes"], list)


def test_windows_round_trip_with_padding():
    x = torch.randn(2, 9, 11, 3)
    windows = split_windows(x, 4)
    assert windows.shape == (2 * 3 * 3, 4, 4, 3)
    assert torch.equal(merge_windows(windows, 9, 11), x)
    # the padding is zeros and lies at the bottom/right
    assert torch.equal(windows[-1, 1:, :, :], torch.zeros(3, 4, 3))


def test_relative_position_table_indexes_offsets():
    table = torch.arange(7.0)[:, None].repeat(1, 2)  # offsets -3..3 for size 4
    rel = relative_position_table(table, 4)
    assert rel.shape == (4, 4, 2)
    for i in range(4):
        for j in range(4):
            assert rel[i, j, 0] == i - j + 3


def test_relative_position_table_resamples_for_other_sizes():
    table = torch.randn(7, 3)  # trained for size 4
    rel = relative_position_table(table, 6)  # needs 11 offsets
    assert rel.shape == (6, 6, 3)
    torch.testing.assert_close(rel, get_rel_pos(6, 6, table))  # Meta's resampling
    ramp = relative_position_table(torch.linspace(0, 1, 7)[:, None], 6)
    assert ramp[5, 0, 0] == 1 and ramp[0, 5, 0] == 0  # the end offsets stay the ends


def meta_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Meta's windowless encoder attention holding `attn`'s weights, applied to x."""
    dim, size = x.shape[-1], x.shape[1]
    reference = MetaAttention(dim, attn.num_heads, use_rel_pos=True, input_size=(size, size))
    reference.load_state_dict(attn.state_dict(), strict=True)
    return reference(x)


@pytest.mark.parametrize("explicit", [False, True])  # fused kernel, two products
@pytest.mark.parametrize("chunk", [1 << 22, 700, 50])  # all at once, head bands, row bands
def test_chunked_attention_equals_metas_attention(monkeypatch, chunk, explicit):
    monkeypatch.setattr(image_encoder, "_BIAS_CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(image_encoder, "_explicit_products", lambda q: explicit)
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=3, grid_size=5)
    torch.nn.init.normal_(attn.rel_pos_h, std=0.5)
    torch.nn.init.normal_(attn.rel_pos_w, std=0.5)
    x = torch.randn(2, 5, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), meta_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_explicit_attention_trains_like_the_fused_kernel(monkeypatch):
    """The explicit products write the scores over the bias in place: autograd still
    gives the fused kernel's gradients."""
    monkeypatch.setattr(image_encoder, "_BIAS_CHUNK_ELEMENTS", 50)  # several chunks
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=3, grid_size=5)
    torch.nn.init.normal_(attn.rel_pos_h, std=0.5)
    x = torch.randn(2, 5, 5, 24)
    grads = []
    for explicit in (False, True):
        monkeypatch.setattr(image_encoder, "_explicit_products", lambda q, e=explicit: e)
        attn.zero_grad()
        leaf = x.clone().requires_grad_(True)
        (attn(leaf) ** 2).sum().backward()
        grads.append((leaf.grad, attn.rel_pos_h.grad.clone(), attn.qkv.weight.grad.clone()))
    for fused, explicit in zip(*grads, strict=True):
        torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cols", [14, 64])  # a window's short rows, a global block's
def test_expanded_bias_holds_the_exact_sums(dtype, cols):
    """Either way of expanding (a product with indicator rows for short bfloat16 rows,
    a broadcast add otherwise) gives each sum rounded once."""
    torch.manual_seed(0)
    by_row = torch.randn(2, 3, 4, 5, 9).to(dtype)  # (batch, heads, rows, cols, key rows)
    by_col = torch.randn(2, 3, 4, 5, cols).to(dtype)
    exact = (by_row.double()[..., :, None] + by_col.double()[..., None, :]).flatten(-2)
    assert torch.equal(image_encoder._expand_bias(by_row, by_col), exact.to(dtype))


def test_gpus_take_larger_bias_chunks_than_the_cpu(monkeypatch):
    """Chunks sized for a CPU cache cost a GPU one kernel launch each (measured on an
    H200: 46 images/s against 126 with large chunks); shapes only, on the meta device."""
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(image_encoder.F, "scaled_dot_product_attention", counting)
    batch, heads, grid, dim = 2, 12, 64, 64  # a vit_b global block at 1024 px
    counts = {}
    for device in ("cpu", "meta"):
        q = torch.zeros(batch, heads, grid * grid, dim, device=device)
        by = torch.zeros(batch, heads, grid, grid, grid, device=device)
        calls.clear()
        out = image_encoder._chunked_attention(q, q, q, by, by)
        assert out.shape == q.shape
        counts[device] = len(calls)
    assert counts["meta"] * 20 <= counts["cpu"]


UNUSED_BY_ONE_POINT = (
    "point_embeddings.0",
    "point_embeddings.2",
    "point_embeddings.3",
    "mask_downscaling",
    "not_a_point",
    "no_mask",
    "output_hypernetworks_mlps.0.",
    # a key bias shifts all logits of a query equally: no effect through the softmax
    "cross_attn_token_to_image.k_proj.bias",
    "final_attn_token_to_image.k_proj.bias",
)


def test_gradients_reach_every_parameter(tiny_model):
    model = build_sam(TINY)
    model.load_state_dict(tiny_model.state_dict())
    features = model.encode_image(torch.rand(1, 3, 256, 256) * 255)
    low_res, iou = model.decode(
        features, (torch.tensor([[[40.0, 60.0]]]), torch.tensor([[1]])), multimask_output=True
    )
    (low_res.mean() + iou.mean()).backward()
    # unused by a single point with multimask output: the box corners, the padding
    # token, the mask path and the single-mask token's MLP
    expected_silent = [
        n for n, _ in model.named_parameters() if any(u in n for u in UNUSED_BY_ONE_POINT)
    ]
    silent = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert set(silent) <= set(expected_silent)
    assert "image_encoder.blocks.1.attn.rel_pos_h" not in silent


@pytest.mark.parametrize("explicit", [False, True])  # fused kernel, two products
def test_bfloat16_encoder_close_to_float32(monkeypatch, tiny_model, explicit):
    monkeypatch.setattr(
        image_encoder, "_explicit_products", lambda q: explicit and q.dtype == torch.bfloat16
    )
    model = build_sam(TINY).eval()
    model.load_state_dict(tiny_model.state_dict())
    image = torch.rand(1, 3, 256, 256) * 255
    with torch.inference_mode():
        reference = model.encode_image(image)
        model.image_encoder.to(torch.bfloat16)
        half = model.encode_image(image)
    assert half.dtype == torch.float32  # the decoder always gets float32
    assert ((half - reference).norm() / reference.norm()).item() < 0.05


def devices():
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


@pytest.mark.parametrize("device", devices())
def test_runs_on_every_available_device(tiny_model, device):
    model = build_sam(TINY).eval()
    model.load_state_dict(tiny_model.state_dict())
    image = torch.rand(1, 3, 200, 256) * 255
    with torch.inference_mode():
        expected = model.encode_image(image)
        model.to(device)
        features = model.encode_image(image.to(device))
        low_res, _iou = model.decode(
            features,
            (torch.tensor([[[10.0, 20.0]]], device=device), torch.tensor([[1]], device=device)),
        )
    assert features.device.type == device and low_res.shape == (1, 3, 64, 64)
    torch.testing.assert_close(features.cpu(), expected, rtol=1e-3, atol=1e-3)


def test_decoder_outputs_follow_multimask_flag(tiny_model):
    """Tokens 1-3 for multimask output, token 0 alone otherwise: as Meta's decoder."""
    theirs = build_reference(TINY)
    theirs.load_state_dict(tiny_model.state_dict(), strict=True)
    features = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    points = (torch.tensor([[[10.0, 20.0], [50, 60]]]), torch.tensor([[1, 0]]))
    for multimask, count in ((True, 3), (False, 1)):
        with torch.inference_mode():
            low_res, iou = tiny_model.decode(features, points, multimask_output=multimask)
            sparse, dense = theirs.prompt_encoder(points, None, None)
            expected, expected_iou = theirs.mask_decoder(
                features, theirs.prompt_encoder.get_dense_pe(), sparse, dense, multimask
            )
        assert low_res.shape == (1, count, 64, 64) and iou.shape == (1, count)
        torch.testing.assert_close(low_res, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(iou, expected_iou, rtol=1e-4, atol=1e-5)


def test_postprocess_resizes_to_the_original_and_drops_padding(tiny_model):
    logits = torch.zeros(1, 1, 64, 64)
    logits[..., :48, :] = 1.0  # the valid region of a 192 x 256 input
    out = tiny_model.postprocess_masks(logits, (192, 256), (300, 400))
    assert out.shape == (1, 1, 300, 400)
    assert (out > 0).float().mean() > 0.95
    theirs = build_reference(TINY)
    smooth = F.interpolate(torch.randn(2, 1, 8, 8), (64, 64), mode="bilinear")
    for input_size, original_size in (((192, 256), (300, 400)), ((256, 256), (256, 256))):
        torch.testing.assert_close(
            tiny_model.postprocess_masks(smooth, input_size, original_size),
            theirs.postprocess_masks(smooth, input_size, original_size),
        )


def test_dense_positional_encoding_is_cached_until_weights_change():
    model = build_sam(TINY)
    first = model.prompt_encoder.get_dense_pe()
    assert model.prompt_encoder.get_dense_pe() is first
    with torch.no_grad():
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2)
    second = model.prompt_encoder.get_dense_pe()
    assert not torch.equal(first, second)
    with torch.inference_mode():
        inference = model.prompt_encoder.get_dense_pe()
    assert inference is not second and torch.equal(inference, second)
    assert not model.prompt_encoder.get_dense_pe().is_inference()


@pytest.mark.parametrize(("queries", "keys"), [(7, 300), (300, 7), (7, 7), (40, 300)])
def test_decoder_attention_folded_forms_equal_metas_attention(queries, keys):
    from napari_sam.model.transformer import Attention as DecoderAttention

    torch.manual_seed(0)
    attn = DecoderAttention(dim=64, num_heads=4, downsample_rate=2)  # head dim 8
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    reference = MetaDecoderAttention(64, 4, downsample_rate=2)
    reference.load_state_dict(attn.state_dict(), strict=True)
    q, k, v = torch.randn(2, queries, 64), torch.randn(2, keys, 64), torch.randn(2, keys, 64)
    folded = attn(q, k, v)
    with torch.no_grad():
        expected = reference(q, k, v)
    # outputs up to 16: float32 rounding in another order differs by up to 3e-5
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4)
    residual = torch.randn(2, queries, 64)
    torch.testing.assert_close(attn(q, k, v, residual=residual), residual + expected,
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # gradients flow through the folded forms as well
    folded.sum().backward()
    # (with few queries the key bias provably has no effect: it shifts a softmax's input)
    unused = {"k_proj.bias"} if queries < 8 < keys else set()
    assert {n for n, p in attn.named_parameters() if p.grad is None} == unused


def test_iou_first_decoding_equals_full_decoding_for_kept_prompts(tiny_model):
    features = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    xy = torch.rand(6, 1, 2) * 256
    points = (xy, torch.ones(6, 1, dtype=torch.int64))
    with torch.inference_mode():
        low, iou = tiny_model.decode(features, points, multimask_output=True)
        threshold = iou.max(dim=1).values.median().item()
        all_iou, rows, kept = tiny_model.decode_iou_first(
            features, points, None, None, True, threshold
        )
    torch.testing.assert_close(all_iou, iou)
    assert rows.tolist() == [i for i in range(6) if max(iou[i].tolist()) > threshold]
    assert 0 < len(rows) < 6
    torch.testing.assert_close(kept, low[rows], rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        _, none, empty = tiny_model.decode_iou_first(features, points, None, None, True, 1e9)
    assert len(none) == 0 and empty.shape == (0, 3, 64, 64)


def test_prompts_share_one_image_side_until_they_change_it(tiny_model):
    """A batch of prompts against one image equals each prompt decoded alone."""
    features = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    xy = torch.rand(4, 2, 2) * 256
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]])
    with torch.inference_mode():
        batch, batch_iou = tiny_model.decode(features, (xy, labels), multimask_output=False)
        for i in range(4):
            one, one_iou = tiny_model.decode(
                features, (xy[i : i + 1], labels[i : i + 1]), multimask_output=False
            )
            torch.testing.assert_close(batch[i : i + 1], one, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(batch_iou[i : i + 1], one_iou, rtol=1e-4, atol=1e-5)


def test_embeddings_are_channels_last_and_decode_the_same_either_way(tiny_model):
    """The decoder reads the embedding as (h*w, C) tokens: stored channels-last (as
    encode_image returns it) they are a contiguous view; channels-first gives the same
    numbers, only slower."""
    image = torch.rand(1, 3, 200, 256) * 255
    with torch.inference_mode():
        features = tiny_model.encode_image(image)
        assert features.is_contiguous(memory_format=torch.channels_last)
        assert tiny_model.prompt_encoder.get_dense_pe().is_contiguous(
            memory_format=torch.channels_last
        )
        points = (torch.tensor([[[100.0, 60.0]]]), torch.tensor([[1]]))
        last = tiny_model.decode(features, points, None, None, True)
        first = tiny_model.decode(features.contiguous(), points, None, None, True)
    for a, b in zip(last, first, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)



def test_clicks_alternating_between_embeddings_reuse_each_ones_image_side(tiny_model):
    """Clicks that alternate between tiles find each tile's image side again (the
    IMAGE_SIDES_KEPT most recently used are kept), with the masks of a fresh decode;
    one more embedding than that evicts the least recently used."""
    tiles = [torch.randn(1, TINY.prompt_embed_dim, 16, 16) for _ in range(IMAGE_SIDES_KEPT + 1)]
    points = (torch.tensor([[[40.0, 90.0]]]), torch.tensor([[1]]))
    with torch.inference_mode():
        for tile in tiles[:2]:
            tiny_model.decode(tile, points)
        first, second = (tiny_model._kept_image_side(t) for t in tiles[:2])
        again = tiny_model.decode(tiles[0], points)
        tiny_model.decode(tiles[1], points)
        assert tiny_model._kept_image_side(tiles[0]) is first
        assert tiny_model._kept_image_side(tiles[1]) is second
        for tile in tiles[2:]:  # tiles[0] is now the least recently used
            tiny_model.decode(tile, points)
    assert tiny_model._kept_image_side(tiles[0]) is None
    assert all(tiny_model._kept_image_side(t) is not None for t in tiles[1:])
    with torch.enable_grad():
        fresh = [t.detach() for t in tiny_model.decode(tiles[0], points)]
    for a, b in zip(again, fresh, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_large_image_sides_are_kept_fewer_within_the_memory_bound(tiny_model, monkeypatch):
    """An image side costs about 9x its embedding: the number kept shrinks to fit
    IMAGE_SIDES_BYTES (Meta's 64 x 64 x 256 embeddings: 2), but the last is always kept."""
    import napari_sam.model.sam as sam_module

    tiles = [torch.randn(1, TINY.prompt_embed_dim, 16, 16) for _ in range(3)]
    side_bytes = 9 * tiles[0].nelement() * tiles[0].element_size()
    points = (torch.tensor([[[40.0, 90.0]]]), torch.tensor([[1]]))
    for budget, kept in ((2.5 * side_bytes, 2), (0.1 * side_bytes, 1)):
        monkeypatch.setattr(sam_module, "IMAGE_SIDES_BYTES", budget)
        with torch.inference_mode():
            for tile in tiles:
                tiny_model.decode(tile, points)
        held = [tiny_model._kept_image_side(t) is not None for t in tiles]
        assert held == [False] * (3 - kept) + [True] * kept

@pytest.mark.parametrize("prompts", [1, 3])
def test_decoding_without_gradients_matches_training_and_keeps_the_embedding(tiny_model, prompts):
    """Without autograd the decoder updates its own image-side temporaries in place;
    the result is the one autograd sees, and the caller's embedding is untouched."""
    features = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    kept = features.clone()
    points = (torch.rand(prompts, 2, 2) * 256, torch.tensor([[1, 0]] * prompts))
    with torch.enable_grad():
        trained = tiny_model.decode(features, points, multimask_output=True)
    with torch.inference_mode():
        inferred = tiny_model.decode(features, points, multimask_output=True)
    for a, b in zip(trained, inferred, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)
    assert torch.equal(features, kept)


def test_clicks_on_one_image_reuse_its_image_side_until_something_changes(tiny_model):
    """Without a mask input the decoder's image side is the same for every click on
    an image; reusing it gives the results of computing it afresh, and a changed
    embedding, no-mask weight or first-layer projection is never served stale."""
    features = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    points = (torch.tensor([[[40.0, 90.0]]]), torch.tensor([[1]]))

    def fresh():
        with torch.enable_grad():  # autograd on: nothing is reused
            return [t.detach() for t in tiny_model.decode(features, points)]

    def click():
        with torch.inference_mode():
            return tiny_model.decode(features, points)

    first, again = click(), click()
    assert tiny_model._kept_image_side(features)[0] is features
    for a, b, c in zip(first, again, fresh(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        features.mul_(-1)  # the embedding changes in place
        changed = click()
        assert not torch.allclose(changed[0], first[0])
        torch.testing.assert_close(changed[0], fresh()[0], rtol=1e-5, atol=1e-5)
        no_mask = tiny_model.prompt_encoder.no_mask_embed.weight
        original = no_mask.clone()
        no_mask.add_(1.0)  # fine-tuning moved it
        try:
            moved = click()
            assert not torch.allclose(moved[0], changed[0])
            torch.testing.assert_close(moved[0], fresh()[0], rtol=1e-5, atol=1e-5)
        finally:
            no_mask.copy_(original)
        # The first layer's projections of the image are kept too: a changed
        # projection weight must not meet the old projections.
        first = tiny_model.mask_decoder.transformer.layers[0]
        for proj in (
            first.cross_attn_token_to_image.k_proj,
            first.cross_attn_token_to_image.v_proj,
            first.cross_attn_image_to_token.q_proj,
        ):
            before = click()
            original = proj.weight.clone()
            proj.weight.mul_(1.5)
            try:
                after = click()
                assert not torch.allclose(after[1], before[1])
                torch.testing.assert_close(after[0], fresh()[0], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(after[1], fresh()[1], rtol=1e-5, atol=1e-5)
            finally:
                proj.weight.copy_(original)


@pytest.mark.parametrize("prompts", [1, 3])
def test_factored_image_tokens_are_the_transformers_tokens(tiny_model, prompts):
    """Kept factored (an image part shared by all clicks plus a few vectors per
    prompt), the decoder's image tokens after its transformer equal the tokens it
    computes directly, and so does a projection of them."""
    transformer = tiny_model.mask_decoder.transformer
    src = torch.randn(1, TINY.prompt_embed_dim, 16, 16)
    pe = tiny_model.prompt_encoder.get_dense_pe()
    tokens = torch.randn(prompts, 7, TINY.prompt_embed_dim)
    side = ImageSide(src.flatten(2).transpose(1, 2), pe.flatten(2).transpose(1, 2))
    with torch.inference_mode():
        direct_tokens, direct = transformer(src, pe, tokens)
        factored_tokens, factored = transformer(None, pe, tokens, side)
        width = direct.shape[-1]
        rebuilt = factored.linear(torch.eye(width), None)
        weight, bias = torch.randn(5, width), torch.randn(5)
        projected = factored.linear(weight, bias)
    assert isinstance(factored, FactoredKeys) and factored.coef.shape[:2] == (prompts, 256)
    torch.testing.assert_close(factored_tokens, direct_tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rebuilt, direct, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(projected, direct @ weight.T + bias, rtol=1e-4, atol=1e-4)
    first = factored.select(torch.tensor([0]))
    torch.testing.assert_close(first.linear(weight, bias), projected[:1])
    with torch.enable_grad(), pytest.raises(RuntimeError, match="inference"):
        transformer(None, pe, tokens, side)
