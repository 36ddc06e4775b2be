"""The model zoo: named SAM checkpoints, verified downloads, safe loading of local files.

>>> model = load_model("vit_b_lm")               # downloaded once, verified, cached
>>> model = load_model("my_finetune.pt", device="cpu", dtype="bfloat16")

This is the bottom layer of the package: it builds on `napari_sam.model` alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._llvm_guard import hide_triton_if_llvm_is_loaded
from ..model import Sam, SamConfig
from .checkpoint import (
    CheckpointError,
    build_model,
    infer_config,
    read_checkpoint,
    read_model_file,
    safe_load,
)
from .devices import DeviceNotAvailableError, available_devices, resolve_device, resolve_dtype
from .download import (
    CACHE_ENV,
    CacheState,
    ConsoleProgress,
    ModelDownloadError,
    ProgressCallback,
    cache_dir,
    cache_state,
    cached_path,
    fetch,
    is_downloaded,
)
from .registry import ModelEntry, UnknownModelError, get_entry, register, registry, unregister

__all__ = [
    "CACHE_ENV",
    "CacheState",
    "CheckpointError",
    "ConsoleProgress",
    "DeviceNotAvailableError",
    "ModelDownloadError",
    "ModelEntry",
    "ProgressCallback",
    "UnknownModelError",
    "available_devices",
    "cache_dir",
    "cache_state",
    "cached_path",
    "default_model",
    "fetch",
    "get_entry",
    "infer_config",
    "is_downloaded",
    "load_model",
    "read_checkpoint",
    "read_model_file",
    "register",
    "registry",
    "resolve_device",
    "resolve_dtype",
    "safe_load",
    "unregister",
]


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    config: SamConfig | None = None,
    progress: ProgressCallback | bool | None = None,
) -> Sam:
    """A ready `Sam` in eval mode, from a registered model name or a checkpoint file.

    - A name (see `registry()`) is downloaded once into `cache_dir()` and verified; a
      file of that name there that is not the published one is never used (see `fetch`).
    - A path is a PyTorch file (.pt, .pth, .ckpt) or a safetensors file holding a SAM
      state_dict, also as training code wraps it: keys prefixed `module.` (DataParallel,
      DDP), `_orig_mod.` (torch.compile), `model.` or `sam.`, nested under "state_dict"
      (Lightning), "model", "model_state_dict" or "model_state" (micro-sam). The
      unwrapped weights must fit the model exactly. Its architecture comes from
      `config`, else from a config stored in the file, else from its tensor shapes
      (which identify vit_b/l/h).
    - An instance segmentation head stored in the file (micro-sam's `decoder_state`, or
      `instance_decoder.` weights saved with a model) is loaded as `model.instance_decoder`
      (see `napari_sam.segment_everything`); without one it is None.
    - `device`: "auto" (cuda, then mps, then cpu) or a device this machine has.
    - `dtype`: "auto" (bfloat16 on a GPU that supports it, else float32) or a floating
      dtype; it applies to the image encoder, while the prompt encoder and mask decoder
      stay float32 (they take milliseconds).
    - `progress`: download progress callback `progress(done_bytes, total_bytes)`; None
      shows a console bar, False nothing.

    Raises `UnknownModelError`, `FileNotFoundError`, `ModelDownloadError`,
    `CheckpointError` or `DeviceNotAvailableError` with a message that says what to do.
    """
    hide_triton_if_llvm_is_loaded()  # building a model imports torch._dynamo
    # Checked first, so a bad device name fails before a download of gigabytes.
    target = resolve_device(device)
    dtype = resolve_dtype(dtype, target)
    entries = registry()
    if isinstance(name_or_path, str) and name_or_path in entries:
        entry = entries[name_or_path]
        path = fetch(entry, progress)
        config = config or entry.config
    else:
        path = _local_file(name_or_path, sorted(entries))
    state, stored, decoder_state = read_model_file(path)
    if config is None:
        config = stored
    if config is None:
        try:
            config = infer_config(state, known=[entry.config for entry in entries.values()])
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
    model = build_model(config, state, str(path), decoder_state)
    if isinstance(name_or_path, str) and name_or_path in entries:
        model.grid_defaults = dict(entries[name_or_path].grid_defaults)
        model.ais_defaults = dict(entries[name_or_path].ais_defaults)
    model.float()
    model.image_encoder.to(dtype)
    return model.to(target).eval()


def default_model() -> str:
    """The model to offer first: the first registered model whose published file is in the
    cache folder (verified, so it loads), else the bundled one, so that a fresh install
    works offline. A file that does not match its model's hash never makes it the default."""
    entries = registry()
    downloaded = [name for name, entry in entries.items() if is_downloaded(entry)]
    bundled = [name for name, entry in entries.items() if entry.bundled]
    return (downloaded or bundled or list(entries))[0]


def _local_file(name_or_path: str | os.PathLike, names: list[str]) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    looks_like_path = not isinstance(name_or_path, str) or any(c in text for c in "/\\.")
    if looks_like_path:
        raise FileNotFoundError(f"No checkpoint file {path} (and it is not a model name).")
    raise UnknownModelError(
        f"{text!r} is neither a registered model nor a file; models: {', '.join(names)}."
    )
