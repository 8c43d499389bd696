"""The job recipe: a declarative YAML description of a fine-tune job.

A recipe names a base model, a dataset, an adapter, an optimizer, a batch size and a number of
epochs, an eval set and the hardware it needs. Nothing in it is ever executed: it is data,
validated here, stored by the coordinator and read by every peer of the swarm.

    recipe = load_recipe(text)        # RecipeError lists every problem with its field path
    text = dump_recipe(recipe)

Used by the coordinator (SubmitJob), the CLI (``essaim job init | validate``) and the swarm
(building the model, the data and the optimizer of a job).
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from essaim.protocol.errors import RecipeError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_RECIPE_BYTES = 256 * 1024
MAX_YAML_DEPTH = 16  # a recipe is sections of fields: a few levels deep at most
MAX_YAML_NODES = 20_000  # scalars, lists and mappings together
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Section(BaseModel):
    # every float finite: `alpha: .inf` or `lr: .nan` would reach every volunteer's optimizer
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, allow_inf_nan=False)


class ModelSpec(_Section):
    """The base model: a hub id (``org/name``), or a directory of files the coordinator serves."""

    name_or_path: str = Field(min_length=1, max_length=512)
    tokenizer: str | None = Field(default=None, max_length=512, description="defaults to the model")
    revision: str = Field(default="main", max_length=128)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = Field(
        default=False, description="refused unless the coordinator's admin allows remote code"
    )
    origin: str | None = Field(
        default=None, max_length=512,
        description="shipped models: where the files come from (a hub id or a URL), for the model card "
        "and provenance; a claim of the researcher's, beside the sha256 of every file",
    )


class DatasetSpec(_Section):
    """Training data: local text / jsonl / parquet files, or a datasets hub name."""

    files: list[str] = Field(default_factory=list, max_length=1024)
    hub_name: str | None = Field(default=None, max_length=512)
    hub_config: str | None = Field(default=None, max_length=128)
    split: str = Field(default="train", max_length=128)
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = Field(default="text", min_length=1, max_length=128)
    sequence_length: int = Field(default=128, ge=8, le=32768)
    shard_size: int = Field(default=1024, ge=1, le=10_000_000, description="packed sequences per shard")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if bool(self.files) == bool(self.hub_name):
            raise ValueError("give either `files` or `hub_name`, not both and not neither")
        return self


class AdapterSpec(_Section):
    """What is trained: a LoRA adapter (only its weights are averaged) or the full model."""

    type: Literal["lora", "full"] = "lora"
    r: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0, le=1e6)
    dropout: Fraction = 0.05
    target_modules: list[str] | None = Field(
        default=None, description="module names to adapt; None lets PEFT pick for known architectures"
    )


class OptimizerSpec(_Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=2e-4, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_epochs: int = Field(default=0, ge=0, le=1_000_000)
    max_grad_norm: float | None = Field(default=1.0, gt=0, le=1e6)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class TrainingSpec(_Section):
    """How the swarm trains.

    One epoch of the swarm is ``target_batch_size`` samples gathered across all peers; after it
    the peers average (gradients in ``sync`` mode, parameters in ``local`` mode).
    """

    target_batch_size: int = Field(default=256, ge=1, le=100_000_000)
    batch_size: int = Field(default=8, ge=1, le=65536, description="per-peer micro-batch")
    epochs: int = Field(default=10, ge=1, le=1_000_000)
    averaging: Literal["sync", "local"] = Field(
        default="sync",
        description="sync: average gradients every epoch; local: local updates, average parameters",
    )
    outer_lr: float = Field(default=0.7, gt=0, le=10, description="local mode: outer (DiLoCo) step size")
    outer_momentum: float = Field(
        default=0.9,
        ge=0,
        lt=1,
        description="local mode: Nesterov momentum of the outer step; 0 with outer_lr 1 is plain averaging",
    )
    overlap_averaging: bool = Field(
        default=True,
        description="local mode: average in the background while the next epoch trains; "
        "each outer step lands one epoch late",
    )
    aggregation: Literal["robust", "mean"] = Field(
        default="robust",
        description="robust: the coordinator's averaging peers reduce every round, refusing non-finite "
        "updates, capping claimed weights and clipping outliers (CenteredClip); mean: hivemind's plain "
        "weighted mean, any peer reduces (a swarm of trusted peers only)",
    )
    averaging_peers: int | None = Field(
        default=None, ge=1, le=64,
        description="robust: how many averaging peers the coordinator runs for this job, each reducing a share "
        "of every round (default: one per 256 MB of trainable parameters in float32; the coordinator's "
        "max_averaging_peers caps it)",
    )
    compression: Literal["none", "fp16", "8bit"] = "fp16"
    matchmaking_time: float = Field(default=5.0, gt=0, le=600, description="seconds to gather peers")
    averaging_timeout: float = Field(default=60.0, gt=0, le=3600)
    checkpoint_every_epochs: int = Field(default=1, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="torch and data order seed (32 bits)")


class EvalSpec(_Section):
    """Held-out data and the metric the checkpoint keeper reports after each checkpoint."""

    files: list[str] = Field(default_factory=list, max_length=64)
    metric: Literal["loss", "perplexity", "exact_match"] = "loss"
    prompt_field: str = Field(default="prompt", max_length=128, description="exact_match: the input")
    answer_field: str = Field(default="answer", max_length=128, description="exact_match: the expected")
    max_samples: int = Field(default=200, ge=1, le=100_000)
    max_new_tokens: int = Field(default=8, ge=1, le=1024)
    sample_prompts: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(
        default_factory=list, max_length=8,
        description="prompts whose greedy continuations, by the base model and by each adopted checkpoint, "
        "the job page, the model card and the provenance show",
    )
    sample_tokens: int = Field(default=48, ge=1, le=512, description="tokens generated after each sample prompt")


class HardwareSpec(_Section):
    min_ram_gb: float = Field(default=2.0, ge=0, le=4096)
    gpu: Literal["none", "optional", "required"] = "optional"
    min_vram_gb: float = Field(default=0.0, ge=0, le=1024)

    @model_validator(mode="after")
    def _vram_needs_gpu(self) -> HardwareSpec:
        if self.min_vram_gb > 0 and self.gpu == "none":
            raise ValueError("min_vram_gb is set but gpu is 'none'")
        return self


class Recipe(_Section):
    """A whole fine-tune job. Unknown fields anywhere are errors."""

    version: Literal[1] = 1
    name: str
    description: str = Field(default="", max_length=4000)
    model: ModelSpec
    dataset: DatasetSpec
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    eval: EvalSpec | None = None
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("a name of 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _batch_fits(self) -> Recipe:
        if self.training.batch_size > self.training.target_batch_size:
            raise ValueError("training.batch_size is larger than training.target_batch_size")
        if self.optimizer.warmup_epochs > self.training.epochs:
            raise ValueError("optimizer.warmup_epochs is longer than training.epochs")
        return self

    def referenced_files(self) -> list[str]:
        """Every file path the recipe names (dataset and eval), in order, without repeats."""
        seen: dict[str, None] = {}
        for path in [*self.dataset.files, *(self.eval.files if self.eval else [])]:
            seen.setdefault(path, None)
        return list(seen)


def normalize_path(path: str) -> str:
    """A recipe path in one spelling: forward slashes, no leading ``./``, no trailing ``/``."""
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in (".", "")]
    return "/".join(parts)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a model or dataset hub id (``name`` or ``org/name``), not a path."""
    return bool(_HUB_ID_RE.match(name)) and ".." not in name


def named_sources(recipe: Recipe) -> list[tuple[str, str]]:
    """(field, name) of each model, tokenizer and dataset the recipe loads by name (not as files)."""
    named = [("model.name_or_path", recipe.model.name_or_path)]
    if recipe.model.tokenizer:
        named.append(("model.tokenizer", recipe.model.tokenizer))
    if recipe.dataset.hub_name:
        named.append(("dataset.hub_name", recipe.dataset.hub_name))
    return named


def paths_named(recipe: Recipe, shipped: Iterable[str]) -> list[tuple[str, str]]:
    """(field, name) of each source the recipe names that is neither a directory the job ships (the
    parent of a shipped file) nor a hub id: a path on some machine's disk, which a coordinator
    accepts only under a directory its admin allows (``--allow-model-dir``)."""
    shipped = list(shipped)
    out = []
    for field, name in named_sources(recipe):
        prefix = name.rstrip("/") + "/"
        if field != "dataset.hub_name" and any(path.startswith(prefix) for path in shipped):
            continue
        if not is_hub_id(name):
            out.append((field, name))
    return out


def under_allowed_dir(name: str, allowed: Iterable[str | Path]) -> bool:
    """Whether ``name`` is an absolute path inside one of the ``allowed`` directories (links resolved)."""
    path = Path(name)
    if not path.is_absolute():
        return False
    resolved = path.resolve()
    return any(resolved.is_relative_to(Path(d).resolve()) for d in allowed)


def refuse_local_source(field: str, name: str, allowed: Iterable[str | Path] | None) -> str | None:
    """Why this machine must not load ``name`` (a recipe's model, tokenizer or dataset) from its own
    disk, or None. ``allowed`` None: any local path may be loaded (a library user's own recipe);
    otherwise only paths inside the ``allowed`` directories: a job's recipe comes from someone else,
    and transformers and datasets load a folder of that name, relative or absolute, before the hub."""
    if allowed is None or not Path(name).expanduser().exists():
        return None
    allowed = list(allowed)
    if under_allowed_dir(str(Path(name).expanduser()), allowed):
        return None
    return (f"{field} {name!r} names a path on this machine, which a job may not load"
            f"{'' if not allowed else ' outside ' + ', '.join(str(d) for d in allowed)}; "
            "ship the files with the job or name a hub id")


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(recipe)"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 2, 50, 40, 50
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 3


def _describe(value: Any) -> str:
    """A short view of a value the recipe gave: bounded however large the input (never its full repr)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: no aliases (a recipe needs none, and a few hundred bytes of
    nested aliases expand to gigabytes), at most ``MAX_YAML_DEPTH`` levels and ``MAX_YAML_NODES``
    nodes, and no key given twice in a mapping (PyYAML keeps the last, which a reviewer reading
    the first would not expect)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a recipe",
                                              event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES} values",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the safe loader refuses it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"the key {_describe(key)} is given twice",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def explain(error: ValidationError) -> list[str]:
    """One line per problem: ``field.path: got <value>; expected <what>``."""
    problems = []
    for item in error.errors(include_url=False):
        path = _format_loc(tuple(item.get("loc", ())))
        kind = item.get("type", "")
        msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            problems.append(f"{path}: unknown field (check its spelling and nesting)")
        elif kind == "missing":
            problems.append(f"{path}: missing; this field is required")
        else:
            problems.append(f"{path}: got {_describe(item.get('input'))}; expected {msg[0].lower() + msg[1:]}")
    return problems


def parse_recipe(data: Any, *, source: str = "recipe") -> Recipe:
    """Validate already-parsed YAML/JSON data; raises RecipeError listing every problem."""
    if not isinstance(data, dict):
        raise RecipeError([f"(recipe): got {_describe(data)}; expected a mapping of sections"], source=source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(explain(exc), source=source) from None


def load_recipe(text: str | bytes, *, source: str = "recipe") -> Recipe:
    """Parse and validate recipe YAML. YAML is loaded with the safe loader: no tags, no code."""
    if isinstance(text, bytes):
        if len(text) > MAX_RECIPE_BYTES:
            raise RecipeError([f"(recipe): {len(text)} bytes; expected at most {MAX_RECIPE_BYTES}"], source=source)
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecipeError([f"(recipe): not UTF-8 text ({exc.reason} at byte {exc.start})"], source=source) from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError([f"(recipe): larger than {MAX_RECIPE_BYTES} bytes"], source=source)
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # a safe loader, bounded
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError([f"(recipe): not valid YAML{where}: {problem}"], source=source) from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise RecipeError([f"(recipe): not valid YAML: {exc}"], source=source) from None
    return parse_recipe(data, source=source)


def load_recipe_file(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError([f"cannot read {path}: {exc.strerror}"], source=str(path)) from None
    return load_recipe(raw, source=str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every field spelled out (defaults included)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def example_path() -> Path:
    return Path(__file__).with_name("recipe_example.yaml")


def example_recipe_text() -> str:
    """The documented example printed by ``essaim job init``; it validates as is."""
    return example_path().read_text()
