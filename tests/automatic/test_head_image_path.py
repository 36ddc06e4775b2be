"""An instance head with an image path (the bundled model's): it reads the image at its
output resolution beside the embedding, loads from a checkpoint as such, and refuses to
run without the image rather than guess."""

import numpy as np
import pytest
import torch

from napari_sam import load_model
from napari_sam.automatic import predict_instance_maps
from napari_sam.model import build_sam
from napari_sam.model.instance_decoder import InstanceDecoder, instance_decoder_from_state
from napari_sam.predictor import embed_image, head_image
from napari_sam.training.finetuning import save_finetuned
from tests.reference import TINY, randomize_


def _model_with_image_head(seed=0):
    model = randomize_(build_sam(TINY).eval(), seed=seed)
    torch.manual_seed(seed)  # PyTorch's own initialisation: finite maps that vary
    model.attach_instance_decoder(InstanceDecoder(TINY.prompt_embed_dim, 8, image_channels=3))
    return model


def test_head_image_fills_the_frame_as_the_image_fills_the_encoders_input():
    model = _model_with_image_head()
    side = 16 * model.prompt_encoder.image_embedding_size[0]
    image = np.full((150, 300), 200, np.uint8)  # wide: 2:1
    image[:, :150] = 10
    embedding = embed_image(model, image)
    pixels = head_image(model, image, embedding.input_size)
    assert pixels.shape == (1, 3, side, side) and pixels.dtype == torch.float32
    rows = embedding.input_size[0] * side // model.img_size  # half the frame
    assert rows == side // 2
    assert torch.all(pixels[..., rows:, :] == 0)  # padding below, as the encoder's
    normed = (torch.tensor([10.0, 200.0])[:, None] - model.pixel_mean[:, 0, 0]) / (
        model.pixel_std[:, 0, 0]
    )  # (2, 3): the dark and the bright half, per channel
    torch.testing.assert_close(pixels[0, :, rows // 2, side // 8], normed[0].float())
    torch.testing.assert_close(pixels[0, :, rows // 2, side - side // 8], normed[1].float())


def test_the_image_path_changes_the_maps_and_is_required():
    model = _model_with_image_head()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 100), np.uint8)
    embedding = embed_image(model, image)
    maps = predict_instance_maps(model, image, embedding=embedding)
    assert maps.shape == (120, 100) and np.isfinite(maps.foreground).all()
    again = predict_instance_maps(model, image)  # the same, embedding the image itself
    np.testing.assert_allclose(again.foreground, maps.foreground, atol=1e-5)
    # Same embedding, other pixels: the head reads them.
    other = predict_instance_maps(model, 255 - image, embedding=embedding)
    assert np.abs(other.foreground - maps.foreground).max() > 1e-3
    with pytest.raises(ValueError, match="reads the image as well"):
        predict_instance_maps(model, embedding=embedding)
    head = model.instance_decoder
    with pytest.raises(ValueError, match="reads the image too"):
        head(embedding.features)
    plain = InstanceDecoder(TINY.prompt_embed_dim, 8)
    with pytest.raises(ValueError, match="embedding alone"):
        plain(embedding.features, head_image(model, image, embedding.input_size))


def test_a_head_with_an_image_path_comes_back_from_its_checkpoint(tmp_path):
    model = _model_with_image_head()
    state = model.instance_decoder.state_dict()
    rebuilt = instance_decoder_from_state(state)
    assert rebuilt.image_channels == 3 and not rebuilt.training
    path = save_finetuned(model, tmp_path / "image_head.pt")
    loaded = load_model(path, device="cpu", progress=False)
    assert loaded.instance_decoder.image_channels == 3
    image = np.random.default_rng(1).integers(0, 255, (64, 80), np.uint8)
    np.testing.assert_allclose(
        predict_instance_maps(loaded, image).boundary_distances,
        predict_instance_maps(model, image).boundary_distances,
        atol=1e-5,
    )
    # micro-sam's own layout is still read as reading the embedding alone.
    assert instance_decoder_from_state(InstanceDecoder(256, 8).state_dict()).image_channels == 0
