"""The model one peer trains: a causal LM from a recipe, on this machine's device, with its adapter.

    loaded = load_model(recipe, files=cached, seed=recipe.training.seed)
    params = loaded.trainable_parameters()     # the only tensors the swarm averages

``recipe.model.name_or_path`` is, in this order: a directory whose files the job ships (``files``
maps recipe paths such as ``model/config.json`` to their cached copies; the directory is rebuilt
from symlinks in a temporary folder), a local directory, or a hub id loaded at ``revision``.
LoRA adapters come from PEFT; their random init is seeded, so every peer starts from the same point.

Used by the volunteer's trainer, the coordinator's checkpoint keeper and the benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from essaim.protocol.recipe import Recipe, normalize_path, refuse_local_source
from essaim.swarm.errors import ModelError
from essaim.swarm.hardware import dtype_name, pick_device, pick_dtype
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to train: weights on ``device`` in ``dtype``, its tokenizer, and what is trained."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: str
    dtype: torch.dtype
    adapter: str  # "lora" | "full"

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Named parameters with ``requires_grad``, in a stable order; only these are averaged and saved."""
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        params = self.model.parameters()
        return sum(p.numel() for p in params if p.requires_grad or not trainable_only)

    def describe(self) -> str:
        total, trainable = self.num_parameters(), self.num_parameters(trainable_only=True)
        return (
            f"{type(self.model).__name__} on {self.device} ({dtype_name(self.dtype)}), adapter {self.adapter}: "
            f"{trainable:,} of {total:,} parameters trained"
        )


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' progress bars (loading and saving weights) for the duration."""
    from transformers.utils import logging as tf_logging

    enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            tf_logging.enable_progress_bar()


def files_under(files: Mapping[str, Path] | None, directory: str) -> dict[str, Path]:
    """The entries of ``files`` inside the recipe directory ``directory``, keyed by their path below it."""
    if not files:
        return {}
    prefix = normalize_path(directory)
    if not prefix:
        return {}
    out: dict[str, Path] = {}
    for key, local in files.items():
        name = normalize_path(key)
        if name.startswith(prefix + "/"):
            out[name[len(prefix) + 1 :]] = Path(local)
    return out


@contextlib.contextmanager
def _materialized(name_or_path: str, files: Mapping[str, Path] | None, *, field: str = "model.name_or_path",
                  local_dirs: Sequence[Path] | None = None) -> Iterator[tuple[str, bool]]:
    """Yield ``(source, is_local)``: a directory to load from, or the hub id itself. A name that is a
    path on this machine is refused unless it is inside ``local_dirs`` (None: any path)."""
    shipped = files_under(files, name_or_path)
    if shipped:
        with tempfile.TemporaryDirectory(prefix="essaim-model-") as tmp:
            for rel, local in shipped.items():
                if ".." in PurePosixPath(rel).parts:
                    raise ModelError(f"job file {name_or_path}/{rel} escapes the model directory; fix the recipe")
                target = Path(tmp, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.symlink(Path(local).resolve(), target)
                except OSError:  # file systems without symlinks (some Windows setups)
                    target.write_bytes(Path(local).read_bytes())
            yield tmp, True
        return
    refused = refuse_local_source(field, name_or_path, local_dirs)
    if refused is not None:
        raise ModelError(refused)
    if Path(name_or_path).expanduser().is_dir():
        yield str(Path(name_or_path).expanduser()), True
        return
    yield name_or_path, False


def _load_tokenizer(source: str, *, revision: str | None, trust: bool) -> PreTrainedTokenizerBase:
    kwargs = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer of {source} has neither a pad nor an eos token; pick another tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _wrap_load_error(what: str, name: str, exc: Exception, *, local: bool) -> ModelError:
    hint = (
        "check that the directory holds a transformers model saved with save_pretrained"
        if local
        else "check the hub id and revision, your network, and that the model is public or you are logged in"
    )
    return ModelError(f"cannot load the {what} {name!r}: {exc}; {hint}")


def _apply_lora(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    spec = recipe.adapter
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules) if spec.target_modules else None,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(
            f"cannot add a LoRA adapter to {recipe.model.name_or_path}: {exc}; "
            "set adapter.target_modules to module names of this model (e.g. [q_proj, v_proj])"
        ) from None


def load_model(
    recipe: Recipe,
    *,
    files: Mapping[str, Path] | None = None,
    device: str | None = None,
    allow_remote_code: bool = False,
    seed: int | None = None,
    local_dirs: Sequence[Path] | None = None,
) -> LoadedModel:
    """Build the recipe's model and adapter on ``device`` (picked for this machine when None).

    ``seed`` (default: ``recipe.training.seed``) seeds torch before the adapter is created, so
    every peer of a job gets the same LoRA init. Remote code runs only when the recipe asks for it
    *and* ``allow_remote_code`` is set. ``local_dirs``: where on this machine a model or tokenizer
    the recipe names by path may be (None: anywhere; a volunteer's trainer passes none at all).
    Raises ModelError with the reason and a fix.
    """
    spec = recipe.model
    device = pick_device(device)
    dtype = pick_dtype(device, spec.dtype)
    trust = bool(spec.trust_remote_code and allow_remote_code)
    if spec.trust_remote_code and not allow_remote_code:
        logger.warning("recipe asks for remote code but it is not allowed here; loading without it")
    tokenizer_name = spec.tokenizer or spec.name_or_path

    with _materialized(spec.name_or_path, files, local_dirs=local_dirs) as (source, local), quiet_progress():
        try:
            model: Any = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=trust, **({} if local else {"revision": spec.revision})
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise _wrap_load_error("model", spec.name_or_path, exc, local=local) from None
        if spec.tokenizer is None:
            try:
                tokenizer = _load_tokenizer(source, revision=None if local else spec.revision, trust=trust)
            except (OSError, ValueError, KeyError) as exc:
                raise _wrap_load_error("tokenizer", tokenizer_name, exc, local=local) from None
    if spec.tokenizer is not None:
        with _materialized(spec.tokenizer, files, field="model.tokenizer", local_dirs=local_dirs) as (source, local):
            try:
                tokenizer = _load_tokenizer(source, revision=None if local else spec.revision, trust=trust)
            except (OSError, ValueError, KeyError) as exc:
                raise _wrap_load_error("tokenizer", tokenizer_name, exc, local=local) from None

    if recipe.adapter.type == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(recipe.training.seed if seed is None else seed)
            model = _apply_lora(model, recipe)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(device)
    model.train()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype, adapter=recipe.adapter.type)
    logger.info("loaded %s: %s", spec.name_or_path, loaded.describe())
    return loaded
