"""Local checkpoint files: formats, config inference, safe loading, wrong files, dtype."""

from __future__ import annotations

import builtins
import collections
import pickle

import pytest
import torch

from napari_sam.model import CONFIGS, build_sam
from napari_sam.zoo import (
    CheckpointError,
    UnknownModelError,
    infer_config,
    load_model,
    register,
    safe_load,
    unregister,
)
from napari_sam.zoo.checkpoint import HeadNotLoadedWarning, RefusedGlobal
from tests.reference import TINY
from tests.zoo.helpers import assert_same_weights, entry_for, tiny_state


@pytest.fixture
def state():
    return tiny_state(seed=5)


def test_plain_state_dict_loads_with_a_given_config(tmp_path, state):
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    model = load_model(path, device="cpu", config=TINY)
    assert not model.training
    assert model.config == TINY
    assert_same_weights(model, state)
    # Non-persistent buffers, not in checkpoints, come from the config.
    assert model.pixel_mean.flatten().tolist() == pytest.approx(TINY.pixel_mean)
    assert model.pixel_std.flatten().tolist() == pytest.approx(TINY.pixel_std)


def test_loaded_model_predicts_like_the_original(tmp_path):
    original = build_sam(TINY).eval()
    torch.nn.init.normal_(original.image_encoder.pos_embed, std=0.1)
    path = tmp_path / "plain.pt"
    torch.save(original.state_dict(), path)
    loaded = load_model(str(path), device="cpu", config=TINY)
    image = torch.rand(1, 3, 200, 256) * 255
    box = torch.tensor([[10.0, 20, 90, 120]])
    with torch.no_grad():
        expected = original.decode(original.encode_image(image), boxes=box)
        actual = loaded.decode(loaded.encode_image(image), boxes=box)
    torch.testing.assert_close(actual, expected)


def test_micro_sam_training_checkpoint(tmp_path, state):
    # micro-sam's form: the weights under model_state with a "sam." prefix, next to
    # training state and an extra decoder that are not part of SAM.
    checkpoint = {
        "model_state": collections.OrderedDict((f"sam.{k}", v) for k, v in state.items()),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5}]},
        "decoder_state": {"base.0.weight": torch.zeros(2, 2)},
        "epoch": 12,
    }
    path = tmp_path / "vit_tiny_lm.pt"
    torch.save(checkpoint, path)
    # The extra decoder is not micro-sam's instance decoder: said, and left out.
    with pytest.warns(HeadNotLoadedWarning, match="not an instance segmentation decoder"):
        model = load_model(path, device="cpu", config=TINY)
    assert_same_weights(model, state)
    assert model.instance_decoder is None


def test_training_checkpoint_with_pickled_objects_loads_through_the_restricted_unpickler(
    tmp_path, state
):
    # A pickled class from elsewhere makes torch's weights_only loader refuse the file.
    checkpoint = {"model_state": {f"sam.{k}": v for k, v in state.items()}, "init": _Init()}
    path = tmp_path / "with_objects.pt"
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = safe_load(path)
    assert isinstance(loaded["init"], RefusedGlobal)
    assert "_Init" in repr(loaded["init"])
    assert_same_weights(load_model(path, device="cpu", config=TINY), state)


class _Init:
    def __init__(self) -> None:
        self.lr = 1e-5


class _Malicious:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_pickle_is_refused_without_running_it(tmp_path, state):
    marker = tmp_path / "pwned"
    # Beside real weights: the weights load, the payload stays inert.
    path = tmp_path / "evil_extra.pt"
    torch.save({**state, "payload": _Malicious(marker)}, path)
    loaded = safe_load(path)
    assert isinstance(loaded["payload"], RefusedGlobal)
    assert "exec" in repr(loaded["payload"])
    assert_same_weights(load_model(path, device="cpu", config=TINY), state)
    assert not marker.exists()

    # As the whole file: refused with an error naming the file.
    path = tmp_path / "evil.pt"
    torch.save(_Malicious(marker), path)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_model(path, device="cpu", config=TINY)
    # A raw pickle, not even torch.save's format.
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Malicious(marker)))
    with pytest.raises(CheckpointError, match=r"evil\.pkl"):
        load_model(raw, device="cpu", config=TINY)
    assert not marker.exists()
    # The payload is real: unrestricted unpickling would have run it.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


# ids avoid "vit_b", which the quick run (-k "not vit_b") leaves out: this test is fast.
@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"], ids=["base", "large", "huge"])
def test_infer_official_configs_from_shapes(name):
    with torch.device("meta"):  # shapes only: no memory, no time
        state = build_sam(name).state_dict()
    assert infer_config(state) == CONFIGS[name]


def test_inferred_config_of_a_local_file_with_a_known_architecture(tmp_path, state):
    # Head counts cannot be read from shapes: a registered entry of the same
    # architecture supplies them, as the official configs do for vit_b/l/h.
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    register(entry_for("test_tiny_arch", path, "http://127.0.0.1:9/unused.pt"))
    try:
        model = load_model(path, device="cpu")
    finally:
        unregister("test_tiny_arch")
    assert model.config == TINY
    assert_same_weights(model, state)


def test_unknown_architecture_asks_for_a_config(tmp_path, state):
    path = tmp_path / "custom.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="config=SamConfig") as error:
        load_model(path, device="cpu")
    message = str(error.value)
    assert str(path) in message
    assert "encoder_embed_dim=64" in message and "encoder_depth=4" in message
    assert "encoder_global_attn_indexes=(1, 3)" in message and "window_size=5" in message


def test_config_stored_in_the_checkpoint_is_used(tmp_path, state):
    path = tmp_path / "with_config.pt"
    torch.save({"config": TINY.to_dict(), "model_state": state}, path)
    model = load_model(path, device="cpu")
    assert model.config == TINY
    assert_same_weights(model, state)


def test_checkpoint_of_another_architecture(tmp_path, state):
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="another architecture") as error:
        load_model(path, device="cpu", config=CONFIGS["vit_b"])
    assert str(path) in str(error.value)
    assert "image_encoder.pos_embed" in str(error.value)

    other = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.bias": torch.zeros(10)}, other)
    with pytest.raises(CheckpointError, match="no SAM weights") as error:
        load_model(other, device="cpu")
    assert str(other) in str(error.value) and "conv1.weight" in str(error.value)


def test_a_vit_encoder_of_another_kind_is_named(tmp_path):
    path = tmp_path / "mobile_sam.pt"
    torch.save({"image_encoder.layers.0.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a SAM ViT checkpoint") as error:
        load_model(path, device="cpu")
    assert str(path) in str(error.value)


def test_missing_file_and_unknown_name():
    with pytest.raises(FileNotFoundError, match=r"no_such\.pt"):
        load_model("no_such.pt")
    with pytest.raises(UnknownModelError, match="vit_b_lm"):  # the message lists the names
        load_model("vit_z")


def test_bfloat16_encoder_float32_decoder(tmp_path, state):
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    model = load_model(path, device="cpu", dtype="bfloat16", config=TINY)
    assert {p.dtype for p in model.image_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.prompt_encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in model.mask_decoder.parameters()} == {torch.float32}
    with torch.no_grad():
        embedding = model.encode_image(torch.rand(1, 3, 256, 256) * 255)
        masks, _ = model.decode(embedding, boxes=torch.tensor([[10.0, 20, 90, 120]]))
    assert embedding.dtype == torch.float32 and masks.dtype == torch.float32
    assert torch.isfinite(masks).all()

    assert load_model(path, device="cpu", config=TINY).image_encoder.pos_embed.dtype == (
        torch.float32  # "auto" on the CPU
    )


def test_half_precision_checkpoints_load_in_float32(tmp_path, state):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in state.items()}, path)
    model = load_model(path, device="cpu", dtype="float32", config=TINY)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    torch.testing.assert_close(
        model.state_dict()["image_encoder.pos_embed"],
        state["image_encoder.pos_embed"].half().float(),
    )


def test_config_must_be_a_sam_config(tmp_path, state):
    path = tmp_path / "bad_config.pt"
    torch.save({"config": {"encoder_embed_dim": 64, "encoder_num_heads": 5}, **state}, path)
    with pytest.raises(CheckpointError, match="stored config is invalid"):
        load_model(path, device="cpu")
