"""Checkpoints as training code saves them (wrapped, nested, safetensors), and files that
are no checkpoint at all: each loads, or is refused saying what it is and what to do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from napari_sam.model import build_sam
from napari_sam.zoo import CheckpointError, load_model, register, unregister
from tests.reference import TINY, randomize_
from tests.zoo.helpers import assert_same_weights, entry_for, tiny_state


@pytest.fixture
def model():
    return randomize_(build_sam(TINY), seed=7)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


# How training code wraps a SAM state_dict, as the checkpoint it saves.
WRAPPED = {
    "DataParallel": lambda m: torch.nn.DataParallel(m).state_dict(),
    "torch.compile": lambda m: torch.compile(m).state_dict(),
    "DataParallel of compiled": lambda m: torch.nn.DataParallel(torch.compile(m)).state_dict(),
    "Lightning": lambda m: {
        "state_dict": _prefixed(m.state_dict(), "model."),
        "epoch": 3,
        "hyper_parameters": {"lr": 1e-4, "model": "vit_t"},
        "optimizer_states": [{"state": {}, "param_groups": []}],
    },
    "Lightning with DDP": lambda m: {"state_dict": _prefixed(m.state_dict(), "module.model.")},
    "model_state_dict": lambda m: {
        "model_state_dict": m.state_dict(),
        "optimizer_state_dict": {"state": {}},
        "epoch": 1,
    },
    "model, compiled DDP": lambda m: {"model": _prefixed(m.state_dict(), "_orig_mod.module.")},
    "micro-sam": lambda m: {"model_state": _prefixed(m.state_dict(), "sam."), "epoch": 2},
    "state_dict in model": lambda m: {"model": {"state_dict": m.state_dict()}},
}


@pytest.mark.parametrize("wrapping", WRAPPED)
def test_wrapped_state_dicts_load(tmp_path, model, wrapping):
    path = tmp_path / "wrapped.pt"
    torch.save(WRAPPED[wrapping](model), path)
    assert_same_weights(load_model(path, device="cpu", config=TINY), model.state_dict())


def test_unwrapped_weights_must_still_fit_exactly(tmp_path, model):
    state = _prefixed(model.state_dict(), "module.")
    del state["module.mask_decoder.iou_token.weight"]
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="1 weights missing") as error:
        load_model(path, device="cpu", config=TINY)
    assert "mask_decoder.iou_token.weight" in str(error.value) and str(path) in str(error.value)

    state = _prefixed(model.state_dict(), "module.")
    state["module.image_encoder.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="1 unexpected weights") as error:
        load_model(path, device="cpu", config=TINY)
    assert "image_encoder.extra.weight" in str(error.value)


def test_two_different_tensors_for_one_weight_are_refused_naming_both(tmp_path, model):
    state = model.state_dict()
    other = tiny_state(seed=9)
    path = tmp_path / "ambiguous.pt"
    torch.save({**state, "module.image_encoder.pos_embed": other["image_encoder.pos_embed"]}, path)
    with pytest.raises(CheckpointError, match="ambiguous") as error:
        load_model(path, device="cpu", config=TINY)
    message = str(error.value)
    assert "'image_encoder.pos_embed'" in message
    assert "'module.image_encoder.pos_embed'" in message

    torch.save({"state_dict": state, "model": other}, path)
    with pytest.raises(CheckpointError, match="ambiguous") as error:
        load_model(path, device="cpu", config=TINY)
    assert "'state_dict/image_encoder." in str(error.value)
    assert "'model/image_encoder." in str(error.value)


def test_the_same_weights_stored_twice_load(tmp_path, model):
    state = model.state_dict()
    clones = {key: value.clone() for key, value in state.items()}  # equal, not shared
    path = tmp_path / "twice.pt"
    torch.save({"state_dict": state, "model": clones, "model_ema": tiny_state(seed=4)}, path)
    assert_same_weights(load_model(path, device="cpu", config=TINY), state)


def test_a_whole_pickled_model_says_to_save_its_state_dict(tmp_path, model):
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match=r"torch\.save\(model\.state_dict\(\), path\)"):
        load_model(path, device="cpu", config=TINY)
    torch.save({"model": model, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"torch\.save\(model\.state_dict\(\), path\)"):
        load_model(path, device="cpu", config=TINY)


# -- safetensors -----------------------------------------------------------------------
def test_safetensors_with_its_config_in_the_metadata(tmp_path, model):
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), path, metadata={"config": json.dumps(TINY.to_dict())})
    loaded = load_model(path, device="cpu")  # no config given: the file's is used
    assert loaded.config == TINY
    assert_same_weights(loaded, model.state_dict())


def test_safetensors_wrapped_and_named_otherwise(tmp_path, model):
    path = tmp_path / "weights.bin"  # recognised by its content, not its name
    save_file(_prefixed(model.state_dict(), "module."), path)
    register(entry_for("test_tiny_arch", path, "http://127.0.0.1:9/unused.pt"))
    try:  # the architecture inferred from shapes, head counts from that entry
        loaded = load_model(path, device="cpu")
    finally:
        unregister("test_tiny_arch")
    assert loaded.config == TINY
    assert_same_weights(loaded, model.state_dict())


def test_safetensors_with_an_invalid_config(tmp_path, model):
    path = tmp_path / "bad.safetensors"
    config = {"encoder_embed_dim": 64, "encoder_num_heads": 5}
    save_file(model.state_dict(), path, metadata={"config": json.dumps(config)})
    with pytest.raises(CheckpointError, match="stored config is invalid") as error:
        load_model(path, device="cpu")
    assert str(path) in str(error.value)


# -- files that are cut short, or no checkpoint at all -----------------------------------
@pytest.mark.parametrize(
    ("save", "looks"),
    [(save_file, "safetensors file but cannot be read"), (torch.save, "checkpoint cut short")],
    ids=["safetensors", "torch"],
)
def test_a_truncated_file_says_so_and_what_to_do(tmp_path, model, save, looks):
    path = tmp_path / "cut.pt"
    save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=looks) as error:
        load_model(path, device="cpu", config=TINY)
    message = str(error.value)
    assert str(path) in message and "truncated" in message
    assert "Download or copy it again" in message and "delete" not in message.lower()
    assert error.value.__cause__ is None and error.value.__suppress_context__


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 375042383\n"


@pytest.mark.parametrize(
    ("content", "looks"),
    [
        (b"", "is empty"),
        (b"not a checkpoint\n", "is a text file beginning 'not a checkpoint', not a checkpoint"),
        (b"\x00" * 100, "binary data of an unknown kind"),
        (b"<!DOCTYPE html>\n<html><body>Access denied</body></html>", "is a web page"),
        (LFS_POINTER, "is a Git LFS pointer"),
        (b"\x80\x04\x95 cut", "is a pickle"),
    ],
    ids=["empty", "text", "zeros", "html", "lfs", "pickle"],
)
def test_a_file_that_is_no_checkpoint_says_what_it_looks_like(tmp_path, content, looks):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint") as error:
        load_model(path, device="cpu", config=TINY)
    message = str(error.value)
    assert str(path) in message and looks in message
    assert "delete" not in message.lower()  # it may be a file the user needs
    assert error.value.__cause__ is None and error.value.__suppress_context__
