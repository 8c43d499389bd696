"""Save and load the trained part of a model (the adapter, or every weight of a full fine-tune).

    save_state(path, loaded, metadata={"job_id": job, "epoch": "12"})   # safetensors, atomic
    metadata = load_state(path, loaded)                                  # strict: same names and shapes

Only ``LoadedModel.trainable_parameters()`` are saved: they are what the swarm averages, and the
frozen base weights come from the job's model files anyway. Metadata is a str -> str mapping kept
in the safetensors header.

Used by the coordinator's checkpoint keeper (periodic checkpoints, state for newcomers) and the
volunteer's trainer (resuming after a restart).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from essaim.swarm.errors import StateError
from essaim.swarm.model import LoadedModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)


def trainable_state_dict(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters, by name (independent of the live model)."""
    return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in loaded.trainable_parameters()}


def save_state(path: Path, loaded: LoadedModel, *, metadata: Mapping[str, str]) -> None:
    """Write the trainable parameters and ``metadata`` to ``path`` (safetensors), atomically."""
    path = Path(path)
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise StateError(f"state metadata must map str to str; convert the values of {bad} with str()")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(trainable_state_dict(loaded), str(tmp), metadata={**metadata, "essaim.adapter": loaded.adapter})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_state(path: Path, loaded: LoadedModel) -> dict[str, str]:
    """Copy a saved state into the model's trainable parameters; returns its metadata.

    The names and shapes must match exactly, else StateError says which differ (a state of
    another job, adapter or model is refused rather than half-loaded).
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise StateError(f"cannot read state {path}: {exc}; the file is missing or damaged") from None
    params = dict(loaded.trainable_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {_names(unexpected)}")
        saved_for = metadata.get("essaim.adapter", "?")
        raise StateError(
            f"state {path} does not fit this model ({'; '.join(parts)}); it was saved for a {saved_for} "
            f"adapter and this model trains a {loaded.adapter} adapter: use a state of the same job"
        )
    wrong = [f"{n} {tuple(tensors[n].shape)} vs {tuple(p.shape)}" for n, p in params.items()
             if tuple(tensors[n].shape) != tuple(p.shape)]
    if wrong:
        raise StateError(f"state {path} has tensors of other shapes ({_names(wrong, 3)}); use a state of the same job")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(device=param.device, dtype=param.dtype))
    metadata.pop("essaim.adapter", None)
    return metadata
