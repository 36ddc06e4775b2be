"""An instance segmentation head travels with its model: micro-sam's `decoder_state`
loads unchanged, a head saved with a model comes back, and a head of another model is a
warning, with the SAM weights loaded on their own."""

import pytest
import torch

from napari_sam import load_model
from napari_sam.model import build_sam
from napari_sam.model.instance_decoder import InstanceDecoder
from napari_sam.training.finetuning import save_finetuned
from napari_sam.zoo.checkpoint import HeadNotLoadedWarning
from tests.reference import TINY, randomize_


def _model_and_head(seed=0):
    model = randomize_(build_sam(TINY).eval(), seed=seed)
    head = randomize_(InstanceDecoder(TINY.prompt_embed_dim, 8), seed=seed + 1)
    return model, head


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def test_micro_sam_checkpoint_with_decoder_state(tmp_path):
    model, head = _model_and_head()
    # micro-sam's export: the SAM weights and the decoder's side by side.
    path = tmp_path / "micro_sam_export.pt"
    torch.save({"model_state": model.state_dict(), "decoder_state": head.state_dict(),
                "config": TINY.to_dict()}, path)  # fmt: skip
    loaded = load_model(path, device="cpu", progress=False)
    assert loaded.instance_decoder is not None and not loaded.instance_decoder.training
    assert _same(loaded.instance_decoder, head)
    sam_only = {k: v for k, v in loaded.state_dict().items() if not k.startswith("instance_")}
    assert sam_only.keys() == model.state_dict().keys()


def test_a_plain_checkpoint_has_no_head(tmp_path):
    model, _ = _model_and_head()
    path = save_finetuned(model, tmp_path / "plain.pt")
    assert load_model(path, device="cpu", progress=False).instance_decoder is None


def test_a_head_saved_with_its_model_comes_back(tmp_path):
    model, head = _model_and_head()
    model.attach_instance_decoder(head)
    path = save_finetuned(model, tmp_path / "with_head.pt")
    loaded = load_model(path, device="cpu", progress=False)
    assert _same(loaded.instance_decoder, head)
    loaded.attach_instance_decoder(None)  # and it can be taken off again
    assert loaded.instance_decoder is None and not any(
        k.startswith("instance_decoder") for k in loaded.state_dict()
    )


def test_a_head_for_other_embeddings_is_refused(tmp_path):
    model, _ = _model_and_head()
    other = InstanceDecoder(TINY.prompt_embed_dim * 2, 8)  # reads 128-channel embeddings
    with pytest.raises(ValueError, match="128-channel"):
        model.attach_instance_decoder(other)
    path = tmp_path / "mismatch.pt"
    torch.save({"model_state": model.state_dict(), "decoder_state": other.state_dict(),
                "config": TINY.to_dict()}, path)  # fmt: skip
    with pytest.warns(HeadNotLoadedWarning, match="128-channel"):
        loaded = load_model(path, device="cpu", progress=False)
    assert loaded.instance_decoder is None  # the SAM weights load on their own


def test_a_decoder_state_that_is_not_a_decoder_is_refused(tmp_path):
    model, head = _model_and_head()
    state = head.state_dict()
    state.pop("out_conv.weight")
    path = tmp_path / "broken.pt"
    torch.save({"model_state": model.state_dict(), "decoder_state": state,
                "config": TINY.to_dict()}, path)  # fmt: skip
    with pytest.warns(HeadNotLoadedWarning, match="not an instance segmentation decoder"):
        assert load_model(path, device="cpu", progress=False).instance_decoder is None
