"""Device and precision choice."""

from __future__ import annotations

import pytest
import torch

from napari_sam.zoo import (
    DeviceNotAvailableError,
    available_devices,
    load_model,
    resolve_device,
    resolve_dtype,
)
from napari_sam.zoo import devices as devices_module


def _fake_machine(monkeypatch, cuda: int = 0, mps: bool = False, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(devices_module, "_mps_available", lambda: mps)


def test_available_devices_of_this_machine():
    devices = available_devices()
    assert devices[-1] == "cpu"
    assert len([d for d in devices if d.startswith("cuda:")]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )


@pytest.mark.parametrize(
    ("cuda", "mps", "expected_devices", "auto"),
    [
        (2, True, ["cuda:0", "cuda:1", "mps", "cpu"], "cuda"),
        (0, True, ["mps", "cpu"], "mps"),
        (0, False, ["cpu"], "cpu"),
    ],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected_devices, auto):
    _fake_machine(monkeypatch, cuda=cuda, mps=mps)
    assert available_devices() == expected_devices
    assert resolve_device("auto") == torch.device(auto)


def test_a_missing_device_names_the_available_ones(monkeypatch):
    _fake_machine(monkeypatch, cuda=1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceNotAvailableError, match=r"cuda:1.*available: cuda:0, cpu"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceNotAvailableError, match="available: cuda:0, cpu"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu please")


def test_load_model_on_a_missing_device_fails_before_loading(tmp_path):
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    # The file does not even exist: the device is checked first.
    with pytest.raises(DeviceNotAvailableError, match="cpu") as error:
        load_model(tmp_path / "absent.pt", device=missing)
    assert missing in str(error.value)


def test_dtype_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16  # asked for: allowed on the CPU
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float16, cpu) == torch.float16
    _fake_machine(monkeypatch, cuda=1, bf16=True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    _fake_machine(monkeypatch, cuda=1, bf16=False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ValueError, match="floating point"):
        resolve_dtype(torch.int64, cpu)
