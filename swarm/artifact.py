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
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from essaim.protocol.recipe import Recipe, is_hub_id, normalize_path, refuse_local_source
from essaim.protocol.types import JobFile
from essaim.protocol.version import __version__
from essaim.swarm.cache import sha256_file
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


class DataSummary(_Record):
    """How much of the data the swarm trained on: its samples (granted, as the ledger counts them)
    over the sequences of the dataset. An epoch is ``target_batch_size`` samples, not a pass."""

    sequences: int
    samples: int = 0
    passes: float = 0.0


class Sample(_Record):
    """One of the recipe's sample prompts, continued greedily by the base model and the final one."""

    prompt: str
    before: str | None = None
    after: str | None = None


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


class BaseModelRecord(_Record):
    """The base model: what it is called, where it came from, and the sha256 of every file of it
    that is known (shipped with the job, or in a folder on the coordinator)."""

    name: str  # the model card's base_model
    source: str = "hub"  # hub: a hub id; shipped: files sent with the job; local: a folder on the coordinator
    path: str = ""  # the recipe's model.name_or_path
    revision: str = ""  # hub: the revision the recipe names
    commit: str = ""  # hub: the commit that revision resolved to, when known
    origin: str = ""  # shipped or local: the recipe's model.origin (declared, not checked)
    files: list[DataFile] = Field(default_factory=list)


class Provenance(_Record):
    """What a model was trained on, how, and by whom; written as provenance.json."""

    job_id: str
    base_model: str
    base: BaseModelRecord | None = None
    recipe: dict[str, Any]
    dataset: list[DataFile] = Field(default_factory=list)
    code_version: str = __version__
    epochs: int = 0
    eval: EvalSummary | None = None
    data: DataSummary | None = None
    samples: list[Sample] = Field(default_factory=list)
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


def _hub_like(name: object) -> bool:
    return isinstance(name, str) and is_hub_id(name) and "/" in name  # org/name: a hub id reads no path


def _declared_name(config: Path | None) -> str:
    """The hub id a model's config.json says it was saved from (``_name_or_path``), if it is one."""
    if config is None:
        return ""
    try:
        name = json.loads(config.read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return ""
    return name if _hub_like(name) else ""


def hash_tree(directory: Path) -> list[DataFile]:
    """``file`` (relative, forward slashes) and sha256 of every file under ``directory``, sorted;
    hidden files and folders (``.cache``, ``.git``) are left out."""
    out = []
    for path in sorted(Path(directory).rglob("*")):
        rel = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(DataFile(file=rel.as_posix(), sha256=sha256_file(path)))
    return out


def base_model_record(recipe: Recipe, job_files: Mapping[str, tuple[str, Path]], *, loaded: Any = None,
                      local_dirs: Sequence[Path] = ()) -> BaseModelRecord:
    """What provenance says of the base model. ``job_files``: recipe path -> (sha256, local file) of
    the job's files. A model shipped with the job is named by ``model.origin``, else by the hub id
    its config.json was saved from, else by its folder; its files are the job's. A folder on the
    coordinator (one of ``local_dirs``) is hashed now. A hub model is its id, revision and commit."""
    spec = recipe.model
    prefix = normalize_path(spec.name_or_path)
    shipped = {k[len(prefix) + 1:]: v for k, v in ((normalize_path(k), v) for k, v in job_files.items())
               if prefix and k.startswith(prefix + "/")}
    origin = spec.origin or ""
    if shipped:
        config = shipped.get("config.json")
        return BaseModelRecord(
            name=origin or _declared_name(config[1] if config else None) or spec.name_or_path,
            source="shipped", path=spec.name_or_path, origin=origin,
            files=[DataFile(file=f"{prefix}/{rel}", sha256=sha) for rel, (sha, _) in sorted(shipped.items())],
        )
    local = Path(spec.name_or_path).expanduser()
    if local.is_dir() and refuse_local_source("model.name_or_path", spec.name_or_path,
                                                                      local_dirs) is None:
        return BaseModelRecord(
            name=origin or _declared_name(local / "config.json") or local.name, source="local",
            path=spec.name_or_path, origin=origin, files=hash_tree(local),
        )
    config = getattr(getattr(loaded, "model", None), "config", None)
    commit = getattr(config, "_commit_hash", None) if config is not None else None
    return BaseModelRecord(name=spec.name_or_path, source="hub", path=spec.name_or_path, revision=spec.revision,
                           commit=commit if isinstance(commit, str) else "")


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "unknown"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def model_card(provenance: Provenance, *, adapter: str, logs: Sequence[str] = ()) -> str:
    """The README.md of an artifact: what it is, how it scores, what it was trained on, by whom;
    ``logs``: the training logs beside it (file names)."""
    p = provenance
    recipe_name = p.recipe.get("name", p.job_id)
    lines = [
        "---",
        # the hub's metadata names a hub id: a shipped model's folder name is none
        *([f"base_model: {p.base_model}"] if p.base is None or p.base.source == "hub" or _hub_like(p.base_model)
          else []),
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
    if p.samples:
        lines += ["## Samples", "", "Greedy continuations of the recipe's sample prompts, by the base model and by "
                  "this one:", ""]
        for sample in p.samples:
            lines += [f"Prompt: {_fence(sample.prompt)}", "Before training:", _fence(sample.before or ""),
                      "After training:", _fence(sample.after or ""), ""]
    lines += _base_section(p.base)
    lines += ["## Training data", ""]
    if p.data is not None:
        lines += [f"{p.data.samples} samples trained over {p.data.sequences} sequences: {p.data.passes:.2f} "
                  "passes over the data.", ""]
    lines += ["| file | sha256 |", "|---|---|"]
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
            *_base_loading(p),
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
    if logs:
        lines += ["## Training log", "", "Beside this file, in CSV (times in UTC): "
                  + ", ".join(f"`{name}`" for name in logs)
                  + ": the job's progress over time (loss, eval, throughput, peers averaged) and its averaging rounds.", ""]
    return "\n".join(lines)


def _fence(text: str) -> str:
    """``text`` in a fenced block no line of it can close (a text is the model's, or a researcher's)."""
    ticks = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"\n{ticks}text\n{text}\n{ticks}"


def _base_section(base: BaseModelRecord | None) -> list[str]:
    if base is None:
        return []
    where = {
        "hub": f"the hub id `{base.path}`, revision `{base.revision or 'main'}`"
               + (f" (commit `{base.commit}`)" if base.commit else ""),
        "shipped": f"files shipped with the job (`{base.path}/`)",
        "local": f"a folder on the coordinator (`{base.path}`)",
    }.get(base.source, base.source)
    lines = ["## Base model", "", f"`{base.name}`, from {where}."]
    if base.origin:
        lines.append(f"The researcher says these files come from `{base.origin}`; the sha256 below pin what was "
                     "trained.")
    lines.append("")
    if base.files:
        lines += ["| file | sha256 |", "|---|---|", *[f"| `{f.file}` | `{f.sha256}` |" for f in base.files], ""]
    return lines


def _base_loading(p: Provenance) -> list[str]:
    """The line of the model card's example that loads the base model."""
    if p.base is None or p.base.source == "hub":
        return [f'base = AutoModelForCausalLM.from_pretrained("{p.base.path if p.base else p.base_model}")']
    if p.base.source == "shipped":
        return [f"# the base was shipped with the job: `essaim job download {p.job_id} --base` fetches it",
                f'base = AutoModelForCausalLM.from_pretrained("path/to/download/base/{p.base.path}")']
    return [f"# the base is a folder on the coordinator ({p.base.path}); its files are listed above",
            'base = AutoModelForCausalLM.from_pretrained("path/to/base")']


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


def write_artifact(out_dir: Path, loaded: LoadedModel, provenance: Provenance,
                   logs: Mapping[str, str] | None = None) -> Path:
    """Write ``out_dir/artifact/`` and ``out_dir/provenance.json``; returns the artifact directory.
    ``logs``: more text files of the artifact, by name (the training log: essaim.coordinator.training_log).

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
        # the adapter names its base as the recipe does; `essaim job download --base` points it at a download
        _save_weights(loaded, tmp, provenance.base.path if provenance.base else provenance.base_model)
        for name, content in (logs or {}).items():
            if Path(name).name != name or name in ("README.md", PROVENANCE_FILE):
                raise ValueError(f"not a log file's name: {name!r}")
            (tmp / name).write_text(content)
        (tmp / "README.md").write_text(model_card(provenance, adapter=loaded.adapter, logs=sorted(logs or {})))
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
