"""Training and eval data of a job: read, tokenized, packed into fixed-length sequences, sharded.

    data = build_train_dataset(recipe, tokenizer, files=cached)       # PackedDataset [n, seq_len]
    for batch in iterate_batches(data, my_shards, batch_size=8, seed=0, epoch=3): ...
    eval_set = load_eval_set(recipe, tokenizer, files=cached)          # EvalSet or None

Files are read with the ``datasets`` library (text: one example per line; jsonl and parquet: the
recipe's ``text_field``), or a hub dataset is loaded by name. Each example is tokenized with the
tokenizer's special tokens (a BOS where the tokenizer adds one), an EOS is appended, and all are
concatenated and cut into sequences of ``dataset.sequence_length`` tokens (the tail shorter than
one sequence is dropped). Shard ``i`` is sequences ``[i * shard_size, (i + 1) * shard_size)``; the
same files and tokenizer give the same shards on every peer.

Used by the volunteer's trainer, the coordinator's checkpoint keeper and the benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from essaim.protocol.recipe import Recipe, refuse_local_source
from essaim.swarm.errors import DataError

logger = logging.getLogger(__name__)

_BUILDERS = {"text": "text", "jsonl": "json", "parquet": "parquet"}
_EXTENSIONS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl",
               ".parquet": "parquet"}
_TOKENIZE_CHUNK = 1000


@dataclass
class PackedDataset:
    """Packed token sequences ``input_ids`` [n, seq_len] (long), split into shards of ``shard_size``."""

    input_ids: torch.Tensor
    num_shards: int
    shard_size: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def sequence_length(self) -> int:
        return int(self.input_ids.shape[1])

    def shard(self, index: int) -> torch.Tensor:
        """The sequences of shard ``index`` (the last shard may hold fewer than ``shard_size``)."""
        if not 0 <= index < self.num_shards:
            raise DataError(f"shard {index} does not exist; this dataset has shards 0..{self.num_shards - 1}")
        return self.input_ids[index * self.shard_size : (index + 1) * self.shard_size]

    def shard_rows(self, index: int) -> range:
        self.shard(index)
        return range(index * self.shard_size, min((index + 1) * self.shard_size, len(self)))


@dataclass
class EvalSet:
    """Held-out data: ``prompts``/``answers`` for exact_match, or packed ``input_ids`` for loss/perplexity."""

    metric: str
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    input_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        if self.metric == "exact_match":
            return len(self.prompts)
        return 0 if self.input_ids is None else int(self.input_ids.shape[0])


def detect_format(path: str, declared: str = "auto") -> str:
    """``text``, ``jsonl`` or ``parquet``: ``declared`` unless it is ``auto``, else from the extension."""
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() not in (".gz", ".bz2", ".xz", ".zst")]
    fmt = _EXTENSIONS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise DataError(f"cannot tell the format of {path!r} from its extension; set dataset.format "
                        "to text, jsonl or parquet")
    return fmt


def _local_paths(paths: Sequence[str], files: Mapping[str, Path] | None) -> list[str]:
    out = []
    for path in paths:
        if files is not None and path not in files:  # a job's data are its files, never this machine's
            raise DataError(f"data file {path!r} is not in the job's files; check the recipe's file list")
        local = Path(files[path]) if files is not None else Path(path)
        if not local.is_file():
            where = "the job's files" if files else "this directory"
            raise DataError(f"data file {path!r} is not in {where}; check the recipe's file list")
        out.append(str(local))
    return out


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    from datasets.utils import logging as ds_logging

    enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            ds_logging.enable_progress_bar()


def _load_table(paths: Sequence[str], declared: str, files: Mapping[str, Path] | None,
                cache_dir: Path | None) -> Any:
    """A ``datasets.Dataset`` of every row of ``paths`` (recipe paths), all of one format."""
    import datasets

    formats = {detect_format(p, declared) for p in paths}
    if len(formats) != 1:
        raise DataError(f"data files mix formats ({', '.join(sorted(formats))}); use one format per file list")
    fmt = formats.pop()
    local = _local_paths(paths, files)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_datasets())
        cache = cache_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="essaim-ds-")))
        try:
            # without a cache dir the table is read into memory: its temporary arrow files go away
            return datasets.load_dataset(_BUILDERS[fmt], data_files=local, split="train", cache_dir=str(cache),
                                         keep_in_memory=cache_dir is None)
        except (ValueError, OSError, TypeError, datasets.exceptions.DatasetGenerationError) as exc:
            raise DataError(f"cannot read {fmt} files {list(paths)}: {exc}; check that they are valid {fmt}") from None


def _require_column(table: Any, column: str, what: str) -> None:
    if column not in table.column_names:
        raise DataError(f"{what} has no field {column!r} (fields: {', '.join(table.column_names)}); "
                        "set the recipe's field name")


def _texts(table: Any, column: str, what: str) -> list[str]:
    _require_column(table, column, what)
    return [str(t) for t in table[column] if t is not None and str(t).strip()]


def tokenize_and_pack(texts: Sequence[str], tokenizer: Any, sequence_length: int, *, drop_tail: bool = True
                      ) -> torch.Tensor:
    """Tokenize each text (special tokens included), append EOS, concatenate, cut into sequences."""
    eos = tokenizer.eos_token_id
    pieces: list[np.ndarray] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        encoded = tokenizer(list(texts[start : start + _TOKENIZE_CHUNK]), add_special_tokens=True,
                            verbose=False)["input_ids"]
        for ids in encoded:
            if eos is not None and (not ids or ids[-1] != eos):
                ids = [*ids, eos]
            pieces.append(np.asarray(ids, dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    n = len(stream) // sequence_length
    if n == 0:
        if drop_tail or len(stream) == 0:
            raise DataError(f"the data holds {len(stream)} tokens, fewer than one sequence of {sequence_length}; "
                            "add data or lower dataset.sequence_length")
        return torch.from_numpy(stream).unsqueeze(0)
    return torch.from_numpy(stream[: n * sequence_length].reshape(n, sequence_length).copy())


def build_train_dataset(recipe: Recipe, tokenizer: Any, *, files: Mapping[str, Path] | None = None,
                        cache_dir: Path | None = None, local_dirs: Sequence[Path] | None = None) -> PackedDataset:
    """The job's training data, packed and sharded as every peer of the job sees it. ``local_dirs``:
    where on this machine a ``dataset.hub_name`` that is a path may be (None: anywhere)."""
    import datasets

    spec = recipe.dataset
    if spec.files:
        table = _load_table(spec.files, spec.format, files, cache_dir)
        fmt = detect_format(spec.files[0], spec.format)
        column = "text" if fmt == "text" else spec.text_field
        what = f"dataset {spec.files[0]}"
    else:
        assert spec.hub_name is not None
        refused = refuse_local_source("dataset.hub_name", spec.hub_name, local_dirs)
        if refused is not None:
            raise DataError(refused)
        try:
            with _quiet_datasets():
                table = datasets.load_dataset(spec.hub_name, spec.hub_config, split=spec.split,
                                              cache_dir=str(cache_dir) if cache_dir else None)
        except Exception as exc:  # the hub raises many kinds; all mean the same to the user
            raise DataError(f"cannot load dataset {spec.hub_name!r} (config {spec.hub_config}, split {spec.split}): "
                            f"{exc}; check the name, config and split, and your network") from None
        column, what = spec.text_field, f"dataset {spec.hub_name}"
    input_ids = tokenize_and_pack(_texts(table, column, what), tokenizer, spec.sequence_length)
    num_shards = -(-input_ids.shape[0] // spec.shard_size)
    logger.info("dataset: %d sequences of %d tokens in %d shards of %d", input_ids.shape[0],
                spec.sequence_length, num_shards, spec.shard_size)
    return PackedDataset(input_ids=input_ids, num_shards=num_shards, shard_size=spec.shard_size)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    digest = hashlib.sha256(f"essaim-batches:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def iterate_batches(dataset: PackedDataset, shard_ids: Sequence[int], *, batch_size: int, seed: int,
                    epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """One pass over the sequences of ``shard_ids``, in an order shuffled by ``(seed, epoch)``.

    Yields ``input_ids``, ``attention_mask`` and ``labels`` of ``batch_size`` rows (the last batch
    may be smaller). The same arguments give the same batches on every machine.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not shard_ids:
        raise DataError("no shards to train on; the volunteer's assignment holds no shard ids")
    rows = torch.tensor([r for s in shard_ids for r in dataset.shard_rows(s)], dtype=torch.long)
    order = rows[torch.randperm(len(rows), generator=_epoch_generator(seed, epoch))]
    for start in range(0, len(order), batch_size):
        input_ids = dataset.input_ids[order[start : start + batch_size]]
        yield {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def load_eval_set(recipe: Recipe, tokenizer: Any, *, files: Mapping[str, Path] | None = None) -> EvalSet | None:
    """The recipe's eval set (at most ``eval.max_samples`` items, the first ones), or None when it has none."""
    spec = recipe.eval
    if spec is None or not spec.files:
        return None
    fmt = detect_format(spec.files[0], "auto")
    table = _load_table(spec.files, "auto", files, None)
    what = f"eval set {spec.files[0]}"
    if spec.metric == "exact_match":
        if fmt == "text":
            raise DataError(f"{what}: exact_match needs jsonl or parquet rows with "
                            f"{spec.prompt_field!r} and {spec.answer_field!r} fields")
        for column in (spec.prompt_field, spec.answer_field):
            _require_column(table, column, what)
        rows = table.select(range(min(spec.max_samples, len(table))))
        prompts = [str(p) for p in rows[spec.prompt_field]]
        answers = ["" if a is None else str(a) for a in rows[spec.answer_field]]
        if not prompts:
            raise DataError(f"{what} is empty; add prompt/answer rows")
        return EvalSet(metric="exact_match", prompts=prompts, answers=answers)
    column = "text" if fmt == "text" else recipe.dataset.text_field
    packed = tokenize_and_pack(_texts(table, column, what), tokenizer, recipe.dataset.sequence_length,
                               drop_tail=False)
    return EvalSet(metric=spec.metric, input_ids=packed[: spec.max_samples])
