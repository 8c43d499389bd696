"""Device and dtype selection."""

from __future__ import annotations

import pytest
import torch
from essaim.swarm.errors import HardwareError
from essaim.swarm.hardware import DEVICES, cuda_available, pick_device, pick_dtype


def test_auto_picks_an_available_device() -> None:
    device = pick_device()
    assert device in DEVICES
    assert pick_device("auto") == device
    if not cuda_available():
        assert device in ("mps", "cpu")


def test_cpu_is_always_available() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cpu", "bfloat16") is torch.bfloat16


@pytest.mark.skipif(cuda_available(), reason="this machine has a CUDA GPU")
def test_a_missing_gpu_is_a_clear_error() -> None:
    with pytest.raises(HardwareError, match="not available"):
        pick_device("cuda")


def test_unusable_or_unknown_choices_are_refused() -> None:
    with pytest.raises(HardwareError, match="unknown device"):
        pick_device("tpu")
    with pytest.raises(HardwareError, match="float16"):
        pick_dtype("cpu", "float16")
    with pytest.raises(HardwareError, match="unknown dtype"):
        pick_dtype("cpu", "int8")
