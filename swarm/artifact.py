"""The result of a finished job: the trained adapter (or model), its model card and its provenance.

    path = write_artifact(out_dir, loaded, provenance)
    # out_dir/artifact/      PEFT adapter (or full model) + tokenizer + README.md + provenance.json
    # out_dir/provenance.json

A LoRA job yields a PEFT adapter directory, loadable with ``PeftModel.from_pretrained(base, dir)``;
a full fine-tune yields a transformers model directory. Provenance records what the model was
trained on and by whom: the recipe, the sha256 of every data file, the code version, the eval
before and after training, each volunteer's samples and compute time, and the final hash of the
contributions ledger. Everything is written into a temporary directory and renamed into place.

Used by the coordinator's checkpoint keeper when a job completes; ``essaim job download`` fetches it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from essaim.protocol.recipe import Recipe
from essaim.protocol.types import JobFile
from essaim.protocol.version import __version__
from essaim.swarm.errors import ArtifactError
from essaim.swarm.model import LoadedModel, quiet_progress
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "artifact"
PROVENANCE_FILE = "provenance.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")  # readers of other versions keep working


class DataFile(_Record):
    file: str
    sha256: str


class EvalPoint(_Record):
    epoch: int
    value: float


class EvalSummary(_Record):
    metric: str
    before: float | None = None
    after: float | None = None
    curve: list[EvalPoint] = Field(default_factory=list)


class Contributor(_Record):
    volunteer: str
    samples: int = 0
    compute_seconds: float = 0.0


class Suspect(_Record):
    """A volunteer whose update a round's reducer refused or clipped hard (robust aggregation)."""

    volunteer: str
    rounds: int = 0
    last_reason: str = ""


class Rollback(_Record):
    """A checkpoint the keeper did not adopt: the swarm went back to the adopted one."""

    epoch: int
    to_epoch: int
    reason: str
    value: float | None = None  # the rejected checkpoint's eval
    volunteers: list[str] = Field(default_factory=list)  # in the rounds since the adopted checkpoint


class AggregationSummary(_Record):
    """How the swarm's rounds were reduced, and who was suspected of what (rounds.jsonl)."""

    method: str = "robust"
    rounds: int = 0
    rounds_averaged: int = 0  # rounds in which two or more volunteers' updates were averaged
    suspects: list[Suspect] = Field(default_factory=list)


class Provenance(_Record):
    """What a model was trained on, how, and by whom; written as provenance.json."""

    job_id: str
    base_model: str
    recipe: dict[str, Any]
    dataset: list[DataFile] = Field(default_factory=list)
    code_version: str = __version__
    epochs: int = 0
    eval: EvalSummary | None = None
    contributors: list[Contributor] = Field(default_factory=list)
    aggregation: AggregationSummary | None = None
    rollbacks: list[Rollback] = Field(default_factory=list)
    ledger_final_hash: str = ""
    # the ledger's head when the job completed, signed by the coordinator (essaim.coordinator.store.ledger):
    # `essaim coordinator ledger verify --head provenance.json` checks a later ledger against it
    ledger_head: dict[str, Any] | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Provenance:
        return cls.model_validate_json(text)


def data_files(recipe: Recipe, job_files: Sequence[JobFile]) -> list[DataFile]:
    """The ``dataset`` entries of a provenance: every data and eval file of the recipe with its sha256."""
    by_path = {f.path: f.sha256 for f in job_files}
    missing = [p for p in recipe.referenced_files() if p not in by_path]
    if missing:
        raise ArtifactError(f"no sha256 known for {', '.join(missing)}; pass the job's files as the coordinator stores them")
    return [DataFile(file=p, sha256=by_path[p]) for p in recipe.referenced_files()]


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "unknown"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def model_card(provenance: Provenance, *, adapter: str) -> str:
    """The README.md of an artifact: what it is, how it scores, what it was trained on, by whom."""
    p = provenance
    recipe_name = p.recipe.get("name", p.job_id)
    lines = [
        "---",
        f"base_model: {p.base_model}",
        f"library_name: {'peft' if adapter == 'lora' else 'transformers'}",
        "tags: [essaim, volunteer-computing" + (", lora]" if adapter == "lora" else "]"),
        "---",
        "",
        f"# {recipe_name}",
        "",
        str(p.recipe.get("description") or "").strip() or f"A fine-tune of {p.base_model}.",
        "",
        f"{'A LoRA adapter for' if adapter == 'lora' else 'A full fine-tune of'} `{p.base_model}`, trained by "
        f"{len(p.contributors)} volunteer(s) with essaim {p.code_version}, peer to peer, over {p.epochs} epoch(s) "
        f"(job `{p.job_id}`, {_when(p.started_at)} to {_when(p.finished_at)}).",
        "",
        "## Evaluation",
        "",
    ]
    if p.eval is not None:
        lines += ["| metric | before training | after training |", "|---|---|---|",
                  f"| {p.eval.metric} | {_fmt(p.eval.before)} | {_fmt(p.eval.after)} |", ""]
        if p.eval.curve:
            lines.append("Curve (epoch: value): " + ", ".join(f"{c.epoch}: {c.value:.4g}" for c in p.eval.curve))
            lines.append("")
    else:
        lines += ["The recipe defines no eval set.", ""]
    lines += ["## Training data", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{d.file}` | `{d.sha256}` |" for d in p.dataset] or ["| (hub dataset) | |"]
    lines += ["", "## Contributors", "", "| volunteer | samples | compute (hours) |", "|---|---|---|"]
    lines += [f"| {c.volunteer} | {c.samples} | {c.compute_seconds / 3600:.3f} |" for c in p.contributors]
    lines += [
        "",
        f"The contributions ledger of this job ends with hash `{p.ledger_final_hash or 'n/a'}`; every row "
        "of it is chained to the previous one, so this hash pins the whole list above.",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(p.recipe, sort_keys=False).rstrip(),
        "```",
        "",
        "## How to load",
        "",
        "```python",
    ]
    if adapter == "lora":
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{p.base_model}")',
            'model = PeftModel.from_pretrained(base, "path/to/artifact")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/artifact")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/artifact")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/artifact")',
        ]
    lines += ["```", "", "`provenance.json` beside this file holds the same record in machine-readable form.", ""]
    return "\n".join(lines)


def _save_weights(loaded: LoadedModel, directory: Path, base_model: str) -> None:
    model: Any = loaded.model
    with quiet_progress():
        if loaded.adapter == "lora":
            configs = getattr(model, "peft_config", None)
            if not configs:
                raise ArtifactError("the model has no PEFT adapter to save; was it loaded with adapter.type lora?")
            previous = {name: cfg.base_model_name_or_path for name, cfg in configs.items()}
            try:
                for cfg in configs.values():
                    cfg.base_model_name_or_path = base_model  # not the temporary directory it was loaded from
                # the vocabulary is never resized: no hub lookup of the base model's config is needed
                model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
            finally:
                for name, cfg in configs.items():
                    cfg.base_model_name_or_path = previous[name]
        else:
            model.save_pretrained(str(directory), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(directory))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_artifact(out_dir: Path, loaded: LoadedModel, provenance: Provenance) -> Path:
    """Write ``out_dir/artifact/`` and ``out_dir/provenance.json``; returns the artifact directory.

    An existing artifact is replaced only once the new one is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / ARTIFACT_DIR
    tmp = out_dir / f".{ARTIFACT_DIR}.{uuid.uuid4().hex[:8]}.tmp"
    old = out_dir / f".{ARTIFACT_DIR}.{uuid.uuid4().hex[:8]}.old"
    text = provenance.to_json()
    try:
        tmp.mkdir()
        _save_weights(loaded, tmp, provenance.base_model)
        (tmp / "README.md").write_text(model_card(provenance, adapter=loaded.adapter))
        (tmp / PROVENANCE_FILE).write_text(text)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _write_atomic(out_dir / PROVENANCE_FILE, text)
    except OSError as exc:
        raise ArtifactError(f"cannot write the artifact under {out_dir}: {exc}; check free space and permissions"
                            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    logger.info("artifact written to %s", final)
    return final
