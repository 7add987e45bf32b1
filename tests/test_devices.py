"""dnr.devices: device names, the one-line description of a run's device, the CPU-fallback
warning on GPU machines (torch and the machine are monkeypatched: no GPU needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import dnr.devices as devices
from dnr.config import ConfigError
from dnr.devices import cpu_fallback_warning, describe_device, is_device_name, resolve_device


@pytest.fixture
def no_gpu_evidence(monkeypatch, tmp_path):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices, "NVIDIA_PROC", str(tmp_path / "absent"))


@pytest.fixture
def cpu_torch(monkeypatch):
    """A CPU-only torch 2.13.0+cpu build."""
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def cuda_torch(monkeypatch):
    """A CUDA 12.4 build of torch 2.5.1 with two visible H100s."""
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")


def test_device_names() -> None:
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"):
        assert is_device_name(name)
    for name in ("gpu", "cuda:", "cuda:x", "CPU", "cuda:0:1", ""):
        assert not is_device_name(name)


def test_describe_cpu(cpu_torch, monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert describe_device(torch.device("cpu")) == "device cpu (2 threads), torch 2.13.0+cpu"


def test_describe_cuda(cuda_torch) -> None:
    assert describe_device(torch.device("cuda:0")) == (
        "device cuda:0 (NVIDIA H100 80GB HBM3), torch 2.5.1+cu124, CUDA 12.4"
    )
    # no index: the current device
    assert describe_device(torch.device("cuda")).startswith("device cuda:1 (NVIDIA H100")


def test_describe_cpu_on_a_cuda_build_names_the_cuda_version(cuda_torch, monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert describe_device("cpu") == "device cpu (16 threads), torch 2.5.1+cu124, CUDA 12.4"


def test_resolve_device_checks_names_and_availability(cpu_torch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        resolve_device("gpu")
    with pytest.raises(
        ConfigError, match=r"cuda:1 requested but CUDA is not available \(a CPU-only"
    ):
        resolve_device("cuda:1")


def test_resolve_device_index_must_be_visible(cuda_torch) -> None:
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"cuda:7 requested but only 2 CUDA device\(s\)"):
        resolve_device("cuda:7")


def test_cpu_fallback_warning_on_a_gpu_machine_with_cpu_only_torch(
    cpu_torch, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(
        devices.shutil,
        "which",
        lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None,
    )
    monkeypatch.setattr(devices, "NVIDIA_PROC", str(tmp_path / "absent"))
    message = cpu_fallback_warning("auto", torch.device("cpu"))
    assert message is not None
    assert message.startswith("WARNING")
    assert "nvidia-smi" in message
    assert "CPU-only build" in message
    assert "2.13.0+cpu" in message
    assert "\n" not in message
    # asked for explicitly, or not on the CPU at all: nothing to warn about
    assert cpu_fallback_warning("cpu", torch.device("cpu")) is None
    assert cpu_fallback_warning("auto", torch.device("cuda:0")) is None


def test_cpu_fallback_warning_from_the_driver_directory(cpu_torch, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices, "NVIDIA_PROC", str(tmp_path))  # exists
    message = cpu_fallback_warning("auto", "cpu")
    assert message is not None
    assert str(tmp_path) in message


def test_cpu_fallback_warning_when_a_cuda_build_sees_no_gpu(cuda_torch, monkeypatch) -> None:
    monkeypatch.setattr(devices.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = cpu_fallback_warning("auto", torch.device("cpu"))
    assert message is not None
    assert "CUDA_VISIBLE_DEVICES" in message
    assert "12.4" in message


def test_no_warning_without_gpu_evidence(cpu_torch, no_gpu_evidence) -> None:
    assert cpu_fallback_warning("auto", torch.device("cpu")) is None


def test_importing_devices_does_not_import_torch() -> None:
    code = "import sys, dnr.devices, dnr.config; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
