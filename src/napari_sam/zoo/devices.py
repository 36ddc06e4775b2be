"""Which devices this machine has, and the device and precision a model runs in."""

from __future__ import annotations

import torch

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class DeviceNotAvailableError(RuntimeError):
    """The requested device does not exist on this machine."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices this machine can run a model on, best first, e.g.
    ["cuda:0", "cuda:1", "cpu"]."""
    devices = []
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device to run on: "auto" picks cuda, else mps, else cpu; any other name is
    checked against this machine.

    Raises `DeviceNotAvailableError`, naming the devices there are, for a device this
    machine lacks (a CUDA device without a GPU, or an index past the last GPU).
    """
    available = available_devices()
    if isinstance(device, str) and device == "auto":
        return torch.device(available[0].split(":")[0])
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{device!r} is not a device name; use 'auto' or one of {available}"
        ) from error
    if device.type == "cpu":
        return device
    present = device.type == "mps" and _mps_available()
    if device.type == "cuda" and torch.cuda.is_available():
        present = device.index is None or device.index < torch.cuda.device_count()
    if not present:
        raise DeviceNotAvailableError(
            f"Device '{device}' is not available on this machine; available: "
            f"{', '.join(available)} (or 'auto' for the best of them)."
        )
    return device


def _supports_bfloat16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        # MPS gained bfloat16 with macOS 14; trying it is the reliable test.
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device).sum().item()
        except (RuntimeError, TypeError):
            return False
        return True
    return False


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The image encoder's dtype: "auto" picks bfloat16 on a GPU that supports it and
    float32 elsewhere; any floating dtype may be asked for (bfloat16 on the CPU, say)."""
    if isinstance(dtype, str):
        if dtype == "auto":
            return torch.bfloat16 if _supports_bfloat16(device) else torch.float32
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"Unknown dtype {dtype!r}; use 'auto' or one of {list(_DTYPE_NAMES)}")
        return _DTYPE_NAMES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch.dtype or a name, got {dtype!r}")
    return dtype
