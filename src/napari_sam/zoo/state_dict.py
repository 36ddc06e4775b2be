"""Finding SAM's weights in a loaded checkpoint, however training code wrapped them.

Meta's files are a plain state_dict (keys `image_encoder.`, `prompt_encoder.`,
`mask_decoder.`). Training code wraps it: `torch.nn.DataParallel` and DDP prefix every key
`module.`, `torch.compile` `_orig_mod.`, a module holding SAM as an attribute `model.` or
`sam.` (micro-sam); PyTorch Lightning and most training scripts nest the state_dict under
"state_dict", "model", "model_state_dict" or "model_state". Any combination is unwrapped;
the weights must then fit the model exactly (`build_model` checks that).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..model import SamConfig

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
CONTAINERS = ("state_dict", "model", "model_state_dict", "model_state")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "sam.")
_MAX_NESTING = 4  # {"state_dict": {"model": ...}} and so on; deeper is not a checkpoint


class CheckpointError(ValueError):
    """A file that is not a usable SAM checkpoint; the message names the file and why."""


def _entries(mapping: Mapping, path: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(path, value) of every string key, descending into the containers; a path names
    the nesting with "/" (e.g. "state_dict/module.image_encoder.pos_embed")."""
    for key, value in mapping.items():
        if not isinstance(key, str):
            continue
        if key in CONTAINERS and isinstance(value, Mapping) and depth < _MAX_NESTING:
            yield from _entries(value, f"{path}{key}/", depth + 1)
        else:
            yield f"{path}{key}", value


def sam_key(path: str) -> str | None:
    """The SAM parameter name a (nested, wrapped) key stands for, or None if it is not one."""
    name = path.rpartition("/")[2]
    while not name.startswith(SAM_PREFIXES):
        prefix = next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            return None
        name = name[len(prefix) :]
    return name


def _same(first: Any, second: Any) -> bool:
    if first is second:
        return True
    tensors = isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
    return (
        tensors
        and first.shape == second.shape
        and first.dtype == second.dtype
        and torch.equal(first, second)
    )


def extract_state_dict(
    checkpoint: Any, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], SamConfig | None]:
    """The SAM weights in a loaded checkpoint, and the config stored with them if any.

    Keys are unwrapped as the module docstring says; entries that are not SAM weights
    (optimizer state, extra decoders, hyper-parameters) are ignored. A stored config is a
    top-level `config` entry holding `SamConfig` fields. Raises `CheckpointError` when
    the file holds no SAM weights, or when two different tensors unwrap to the same name.
    """
    if not isinstance(checkpoint, Mapping):
        if _is_object(checkpoint):
            raise CheckpointError(
                f"{source} holds a pickled object ({checkpoint!r}), not a state_dict: "
                f"{_PICKLED}"
            )
        raise CheckpointError(
            f"{source} holds a {type(checkpoint).__name__}, not a state_dict: "
            "it is not a SAM checkpoint."
        )
    state: dict[str, Any] = {}
    origin: dict[str, str] = {}
    seen: list[tuple[str, Any]] = []
    for path, value in _entries(checkpoint):
        seen.append((path, value))
        name = sam_key(path)
        if name is None:
            continue
        if name in state and not _same(state[name], value):
            raise CheckpointError(
                f"{source} is ambiguous: {origin[name]!r} and {path!r} both stand for SAM's "
                f"{name!r} but hold different values. Save the state_dict you mean on its "
                "own (e.g. torch.save(checkpoint['state_dict'], 'sam.pt')) and load that."
            )
        state.setdefault(name, value)
        origin.setdefault(name, path)
    if not state:
        sample = ", ".join(repr(path) for path, _ in seen[:5]) or "none"
        pickled = [f"{path!r} is a pickled object" for path, value in seen if _is_object(value)]
        hint = f" {pickled[0]}: {_PICKLED}" if pickled else ""
        raise CheckpointError(
            f"{source} contains no SAM weights: expected keys starting with "
            f"{', '.join(SAM_PREFIXES)} (possibly prefixed {', '.join(WRAPPER_PREFIXES)} or "
            f"nested under {', '.join(CONTAINERS)}); its {len(seen)} entries include "
            f"{sample}.{hint}"
        )
    not_tensors = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        name = not_tensors[0]
        raise CheckpointError(
            f"{source}: {len(not_tensors)} weights are not tensors "
            f"(e.g. {origin[name]!r} is {state[name]!r})."
        )
    config = config_from(checkpoint.get("config"), source)
    return {name: value.detach() for name, value in state.items()}, config


DECODER_STATE = "decoder_state"  # micro-sam's entry for its instance segmentation decoder
HEAD_PREFIX = "instance_decoder."  # the head's keys in `Sam.state_dict()`


def extract_decoder_state(checkpoint: Any, source: str = "checkpoint") -> dict | None:
    """The instance segmentation decoder's weights in a loaded checkpoint, or None.

    micro-sam stores them as a top-level `decoder_state` mapping beside the SAM weights;
    a `Sam.state_dict()` with a head holds them under `instance_decoder.` (unwrapped
    like SAM's keys). Raises `CheckpointError` when `decoder_state` holds non-tensors."""
    if not isinstance(checkpoint, Mapping):
        return None
    stored = checkpoint.get(DECODER_STATE)
    if isinstance(stored, Mapping) and stored:
        bad = [key for key, value in stored.items() if not isinstance(value, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{source}: its decoder_state entry {bad[0]!r} is not a tensor.")
        return {str(key): value.detach() for key, value in stored.items()}
    head = {}
    for path, value in _entries(checkpoint):
        name = path.rpartition("/")[2]
        while not name.startswith(HEAD_PREFIX):
            prefix = next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None)
            if prefix is None:
                break
            name = name[len(prefix) :]
        if name.startswith(HEAD_PREFIX) and isinstance(value, torch.Tensor):
            head[name[len(HEAD_PREFIX) :]] = value.detach()
    return head or None


_PLAIN = (Mapping, torch.Tensor, str, bytes, int, float, list, tuple, set, frozenset)


def _is_object(value: Any) -> bool:
    """An object other than plain data (one the safe loader refused to rebuild)."""
    return value is not None and not isinstance(value, _PLAIN)


_PICKLED = (
    "e.g. a whole model saved with torch.save(model), whose code is not run when loading. "
    "Save its weights instead: torch.save(model.state_dict(), path)."
)


def config_from(stored: Any, source: str) -> SamConfig | None:
    """The `SamConfig` stored in a checkpoint: a mapping of its fields, or their JSON text
    (as in a safetensors file's metadata); None when absent or some other tool's notion
    of a config. Raises `CheckpointError` when it names only SamConfig fields but their
    values are invalid."""
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except ValueError:
            return None
    fields = {field.name for field in dataclasses.fields(SamConfig)}
    if not isinstance(stored, Mapping) or not stored or not set(stored) <= fields:
        return None
    try:
        return SamConfig(**stored)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: its stored config is invalid: {error}") from None
