"""Reading checkpoint files safely, finding the SAM weights in them, and inferring the
architecture from their shapes.

Nothing a checkpoint contains may run code: PyTorch files are read with
`torch.load(weights_only=True)`, and the files it refuses (training checkpoints that
pickle other objects) with an unpickler that returns an inert `RefusedGlobal` for every
class or function it is asked for, except the few torch needs to rebuild tensors.
safetensors files hold no pickle at all; they are recognised by their content, whatever
their name.
"""

from __future__ import annotations

import collections
import pickle
import re
import types
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..model import CONFIGS, Sam, SamConfig, build_sam
from ..model.instance_decoder import instance_decoder_from_state
from .state_dict import (
    SAM_PREFIXES,
    CheckpointError,
    config_from,
    extract_decoder_state,
    extract_state_dict,
)

__all__ = [
    "SAM_PREFIXES",
    "CheckpointError",
    "HeadNotLoadedWarning",
    "RefusedGlobal",
    "build_model",
    "extract_state_dict",
    "infer_config",
    "read_checkpoint",
    "read_model_file",
    "safe_load",
]


# -- safe loading ----------------------------------------------------------------------
class RefusedGlobal:
    """Stands in for a class or function named in a checkpoint that the loader refused to
    import. Calling it, or restoring state into it, does nothing."""

    target = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<refused {self.target}>"


def _tensor_globals() -> dict[tuple[str, str], Any]:
    """The only callables a checkpoint may name: tensor rebuilding and plain containers.
    (torch resolves "...Storage" names itself before asking the unpickler.)"""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch", "Size"): torch.Size,
    }
    # Protocol 2, which torch.save uses, names the builtins module as Python 2 did.
    allowed["__builtin__", "set"] = set
    allowed["__builtin__", "frozenset"] = frozenset
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"):
        if hasattr(torch._utils, name):
            allowed["torch._utils", name] = getattr(torch._utils, name)
    allowed["torch._utils", "_rebuild_parameter"] = torch._utils._rebuild_parameter
    return allowed


_ALLOWED = _tensor_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        # dtypes are pickled as globals of the torch module (torch.float32, ...).
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        # Never import `module`: importing alone can run code.
        return type(f"Refused_{name}", (RefusedGlobal,), {"target": f"{module}.{name}"})


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# What torch.load calls a "pickle module": it subclasses Unpickler and calls load.
_restricted_pickle = types.SimpleNamespace(
    __name__="napari_sam_restricted_pickle",
    Unpickler=_RestrictedUnpickler,
    load=_restricted_load,
)


def safe_load(path: str | Path) -> Any:
    """Load a checkpoint file onto the CPU without running any code it contains.

    A safetensors file (recognised by its content) gives its dict of tensors. Otherwise
    tries `torch.load(weights_only=True)`; where that refuses the file, loads it again
    with a restricted unpickler that turns foreign classes into `RefusedGlobal`.
    Raises `CheckpointError` naming the file, saying what it looks like and what to do,
    when it cannot be read.
    """
    path = Path(path)
    if _is_safetensors(path):
        return _read_safetensors(path)[0]
    try:
        with warnings.catch_warnings():
            # Plain pickles (not torch.save's) make it warn before failing; we go on below.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception:  # refused globals, or unreadable: the restricted load tells which
        pass
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle
        )
    except FileNotFoundError:
        raise
    except Exception as error:
        raise _unreadable(path, _first_line(error)) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


# -- safetensors -----------------------------------------------------------------------
_MAX_SAFETENSORS_HEADER = 100_000_000  # the format's own limit on its JSON header


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts as safetensors files do: the little-endian byte count of
    a JSON header, then the header's opening brace."""
    with open(path, "rb") as file:
        head = file.read(9)
    if len(head) < 9:
        return False
    header_bytes = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_bytes < _MAX_SAFETENSORS_HEADER


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors by name, the file's string metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata, names = file.metadata() or {}, file.keys()  # (not iterable itself)
            return {name: file.get_tensor(name) for name in names}, metadata
    except Exception as error:  # safetensors raises its own error type, or OSError
        raise CheckpointError(
            f"{path} looks like a safetensors file but cannot be read "
            f"({_first_line(error)}): it is probably truncated or damaged "
            f"({path.stat().st_size} bytes). Download or copy it again."
        ) from None


# -- what an unreadable file looks like ------------------------------------------------
_CHOOSE = "choose the checkpoint file itself (.pt, .pth, .ckpt or .safetensors)"


def _unreadable(path: Path, reason: str) -> CheckpointError:
    """The error for a file neither loader could read, saying what the file looks like."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(256)
    if size == 0:
        looks, todo = "is empty (0 bytes)", "Download or copy it again"
    elif head.startswith(b"PK") and not zipfile.is_zipfile(path):
        looks = (
            f"looks like a PyTorch checkpoint cut short ({size} bytes, the end of its zip "
            "archive is missing): probably truncated by an interrupted download or copy"
        )
        todo = "Download or copy it again"
    elif head.startswith(b"PK"):
        looks = f"is a zip archive ({size} bytes) but not a readable PyTorch checkpoint ({reason})"
        todo = f"If it is a download, download it again; otherwise {_CHOOSE}"
    elif head[:1] == b"\x80":
        looks = (
            f"is a pickle ({size} bytes), not a checkpoint PyTorch can read ({reason}); "
            "it may be truncated, or saved by something other than torch.save"
        )
        todo = f"Download or copy it again, or {_CHOOSE}"
    elif _is_text(head):
        looks, todo = _describe_text(head.decode("utf-8", "replace"))
    else:
        looks = (
            f"is binary data of an unknown kind ({size} bytes, starting "
            f"{head[:8].hex(' ')}), neither a PyTorch nor a safetensors checkpoint"
        )
        todo = f"If it is a download, download it again; otherwise {_CHOOSE}"
    return CheckpointError(f"{path} cannot be read as a checkpoint: it {looks}. {todo}.")


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:
            return False  # not merely a multi-byte character cut off at the end
        text = head[: error.start].decode("utf-8")
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _describe_text(text: str) -> tuple[str, str]:
    first = text.strip().splitlines()[0][:80] if text.strip() else ""
    if text.startswith("version https://git-lfs"):
        return "is a Git LFS pointer, not the file it points to", (
            "Fetch the file itself (git lfs pull) or download it"
        )
    if "<html" in text.lower() or "<!doctype" in text.lower():
        return "is a web page (an error or login page saved in place of the file?)", (
            "Download the checkpoint itself"
        )
    return f"is a text file beginning {first!r}, not a checkpoint", _CHOOSE.capitalize()


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], SamConfig | None]:
    """The SAM weights in the file at `path` and the config stored with them, or None.

    PyTorch files (`safe_load`, then `extract_state_dict` unwraps them) and safetensors
    files, whose config is JSON text in their metadata under "config".
    Raises `FileNotFoundError` or `CheckpointError`.
    """
    state, config, _ = read_model_file(path)
    return state, config


def read_model_file(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], SamConfig | None, dict[str, torch.Tensor] | None]:
    """`read_checkpoint`, plus the instance segmentation decoder's weights when the file
    has them (micro-sam's `decoder_state`, or a head saved with the model), else None."""
    path = Path(path)
    if _is_safetensors(path):
        tensors, metadata = _read_safetensors(path)
        state, _ = extract_state_dict(tensors, str(path))
        config = config_from(metadata.get("config"), str(path))
        return state, config, extract_decoder_state(tensors, str(path))
    checkpoint = safe_load(path)
    state, config = extract_state_dict(checkpoint, str(path))
    return state, config, extract_decoder_state(checkpoint, str(path))


# -- config inference ------------------------------------------------------------------
def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indexes = {int(match.group(1)) for key in state if (match := pattern.match(key))}
    return max(indexes) + 1 if indexes else 0


def infer_config(state: Mapping[str, torch.Tensor], known: Iterable[SamConfig] = ()) -> SamConfig:
    """The `SamConfig` whose model has the shapes of `state`.

    Widths, depths, patch, input and window sizes and the global-attention blocks are read
    from shapes. Attention head counts leave no trace in shapes: they are taken from the
    official configs (and `known` ones) of the same width and depth, and a `CheckpointError`
    asks for an explicit config when none or several match.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(
                f"it is not a SAM ViT checkpoint: it lacks {key!r} "
                "(other encoders, such as MobileSAM's TinyViT, are not supported)."
            )
        return tuple(state[key].shape)

    dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = _count(state, "image_encoder.blocks.")
    global_blocks, windows = [], set()
    for block in range(depth):
        rows = shape(f"image_encoder.blocks.{block}.attn.rel_pos_h")[0]
        if rows == 2 * grid - 1:
            global_blocks.append(block)
        else:
            windows.add((rows + 1) // 2)
    if len(windows) > 1:
        raise CheckpointError(f"its windowed blocks use several window sizes {sorted(windows)}.")
    prompt_dim = shape("prompt_encoder.no_mask_embed.weight")[1]
    decoder_depth = _count(state, "mask_decoder.transformer.layers.")
    decoder_mlp = shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0]
    inferred = {
        "encoder_embed_dim": dim,
        "encoder_depth": depth,
        "encoder_global_attn_indexes": tuple(global_blocks),
        "img_size": grid * patch,
        "patch_size": patch,
        "window_size": windows.pop() if windows else SamConfig.window_size,
        "mlp_ratio": shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / dim,
        "prompt_embed_dim": prompt_dim,
        "mask_in_chans": shape("prompt_encoder.mask_downscaling.6.weight")[1],
        "decoder_depth": decoder_depth,
        "decoder_mlp_dim": decoder_mlp,
        "num_multimask_outputs": shape("mask_decoder.mask_tokens.weight")[0] - 1,
        "iou_head_depth": _count(state, "mask_decoder.iou_prediction_head.layers."),
        "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    }
    candidates = [*CONFIGS.values(), *known]
    encoder_heads = {
        c.encoder_num_heads
        for c in candidates
        if (c.encoder_embed_dim, c.encoder_depth) == (dim, depth)
    }
    decoder_heads = {
        c.decoder_num_heads
        for c in candidates
        if (c.prompt_embed_dim, c.decoder_depth, c.decoder_mlp_dim)
        == (prompt_dim, decoder_depth, decoder_mlp)
    }
    if len(encoder_heads) != 1 or len(decoder_heads) != 1:
        fields = ", ".join(f"{key}={value!r}" for key, value in inferred.items())
        raise CheckpointError(
            f"its architecture (encoder width {dim}, depth {depth}) is not vit_b, vit_l or "
            "vit_h, and attention head counts cannot be read from tensor shapes. Pass "
            f"config=SamConfig(encoder_num_heads=..., decoder_num_heads=..., {fields})."
        )
    return SamConfig(
        **inferred,
        encoder_num_heads=encoder_heads.pop(),
        decoder_num_heads=decoder_heads.pop(),
    )


# -- building --------------------------------------------------------------------------
def _check_fits(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str
) -> None:
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} is {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} "
        "in the model"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{len(items)} {what} (e.g. {items[0]})"
        for items, what in (
            (missing, "weights missing"),
            (unexpected, "unexpected weights"),
            (reshaped, "weights of another shape"),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model it should load into: {'; '.join(problems)}. "
            "It is a checkpoint of another architecture: pass the model name or config "
            "that matches it."
        )


def build_model(
    config: SamConfig,
    state: Mapping[str, torch.Tensor],
    source: str,
    decoder_state: Mapping[str, torch.Tensor] | None = None,
) -> Sam:
    """A `Sam` of `config` holding the weights `state` (checked strictly), on the CPU,
    with an instance segmentation head built from `decoder_state` when given (one that
    is not micro-sam's decoder for this model: `HeadNotLoadedWarning`, no head)."""
    model = _build_sam_only(config, state, source)
    if decoder_state is not None:
        try:
            model.attach_instance_decoder(
                instance_decoder_from_state(decoder_state, f"{source} (decoder_state)")
            )
        except ValueError as error:
            # The SAM weights are good on their own: load them, and say why the head is not.
            warnings.warn(HeadNotLoadedWarning(
                f"{error} The model is loaded without an instance segmentation head "
                "(segment everything uses the grid of point prompts)."), stacklevel=3)
    return model


class HeadNotLoadedWarning(UserWarning):
    """A checkpoint's instance segmentation decoder did not fit; its SAM weights loaded."""


def _build_sam_only(config: SamConfig, state: Mapping[str, torch.Tensor], source: str) -> Sam:
    # Built on the meta device, the model costs no random initialisation (seconds for
    # vit_h) and takes the loaded tensors as they are, without a second copy in memory.
    with torch.device("meta"):
        model = build_sam(config)
    _check_fits(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True, assign=True)
    if not _materialise_config_buffers(model, config):
        model = build_sam(config)  # an unknown non-persistent buffer: build it for real
        model.load_state_dict(state, strict=True)
    return model


def _materialise_config_buffers(model: torch.nn.Module, config: SamConfig) -> bool:
    """Fill the non-persistent buffers left on the meta device (they are not in
    checkpoints) from the config fields of the same name; False if one has none."""
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        value = getattr(config, leaf, None)
        if value is None:
            return False
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, leaf, torch.tensor(value, dtype=buffer.dtype).reshape(buffer.shape))
    return True
