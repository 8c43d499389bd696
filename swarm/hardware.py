"""Which device and dtype one peer trains on: CUDA, Apple MPS or the CPU; bfloat16 where it is supported.

    device = pick_device()                 # "cuda" if a CUDA GPU is usable, else "mps", else "cpu"
    dtype = pick_dtype(device, "auto")     # bfloat16 on GPUs that support it, float32 on CPUs

Used by :func:`essaim.swarm.model.load_model` (the volunteer's trainer and the coordinator's
checkpoint keeper). A recipe's ``model.dtype`` is the ``requested`` argument of :func:`pick_dtype`.
"""

from __future__ import annotations

import functools
import logging

import torch
from essaim.swarm.errors import HardwareError

logger = logging.getLogger(__name__)

DEVICES = ("cuda", "mps", "cpu")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _available(device: str) -> bool:
    if device == "cuda":
        return cuda_available()
    if device == "mps":
        return mps_available()
    return device == "cpu"


def pick_device(prefer: str | None = None) -> str:
    """The device to train on: ``prefer`` when given (``cuda``, ``mps``, ``cpu``; ``auto`` or None picks).

    Raises HardwareError when the preferred device is not usable here.
    """
    if prefer is None or prefer == "auto":
        for device in DEVICES:
            if _available(device):
                return device
        return "cpu"
    name = prefer.split(":", 1)[0].lower()
    if name not in DEVICES:
        raise HardwareError(f"unknown device {prefer!r}; use one of: auto, {', '.join(DEVICES)}")
    if not _available(name):
        raise HardwareError(
            f"device {prefer!r} is not available on this machine; use 'auto' to pick what is "
            "(check the GPU driver and that the installed torch build supports it)"
        )
    return prefer.lower()


@functools.cache
def _bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return cuda_available() and torch.cuda.is_bf16_supported()
    if device == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device="mps").sum().item()
        except (RuntimeError, TypeError):
            return False
        return True
    return device == "cpu"


def pick_dtype(device: str, requested: str = "auto") -> torch.dtype:
    """The dtype for the model's weights on ``device``.

    ``auto``: bfloat16 on a CUDA or MPS device that supports it, float16 on older CUDA GPUs,
    float32 otherwise (the CPU: bfloat16 matmuls are slow on most CPUs, and the demo's tiny models
    train best in float32). An explicit ``float32``/``bfloat16``/``float16`` is honoured when the
    device can train in it, else HardwareError.
    """
    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if _bf16_supported(device) else torch.float16
        if device == "mps":
            return torch.bfloat16 if _bf16_supported(device) else torch.float32
        return torch.float32
    if requested not in _DTYPES:
        raise HardwareError(f"unknown dtype {requested!r}; use one of: auto, {', '.join(_DTYPES)}")
    dtype = _DTYPES[requested]
    if dtype is torch.bfloat16 and not _bf16_supported(device):
        raise HardwareError(f"{device} cannot compute in bfloat16 here; set model.dtype to auto or float32")
    if dtype is torch.float16 and device == "cpu":
        raise HardwareError("float16 training is not supported on the CPU; set model.dtype to auto or float32")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, for logs, metadata and model cards."""
    return str(dtype).removeprefix("torch.")


# ---- this process's memory (Linux: the kernel's own peak, which can be reset) ----
_STATUS = "/proc/self/status"


def reset_peak_memory() -> bool:
    """Start measuring this process's peak resident memory afresh (Linux: ``clear_refs`` 5 resets
    VmHWM); False where that cannot be done (other systems, or a kernel that refuses)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return peak_memory() is not None
    except OSError:
        return False


def peak_memory() -> int | None:
    """This process's peak resident memory in bytes since the last :func:`reset_peak_memory`
    (Linux's VmHWM); None where it is not known."""
    return _status_bytes("VmHWM:")


def resident_memory() -> int | None:
    """This process's resident memory in bytes now (Linux's VmRSS); None where it is not known."""
    return _status_bytes("VmRSS:")


def _status_bytes(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
