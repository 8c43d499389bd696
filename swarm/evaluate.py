"""Evaluate a model on a job's held-out set with the recipe's metric.

    result = evaluate(loaded, eval_set, recipe.eval)   # EvalResult(metric, value, samples)

``exact_match``: greedy decoding of up to ``max_new_tokens`` after each prompt; the continuation up
to the first EOS or newline, stripped, must equal the stripped answer. ``value`` is the fraction
of prompts answered exactly (0..1). ``loss``: mean next-token loss over the packed eval sequences;
``perplexity``: its exponential. Every result also carries ``loss``, a lower-is-better health
signal the checkpoint keeper compares across checkpoints: the mean loss itself, or for
``exact_match`` the mean loss of the answers' tokens after their prompts (an accuracy still at 0
early in a job says nothing of a model wrecked since; this does).

Used by the coordinator's checkpoint keeper (the eval curve of a job, ``before`` and ``after`` in
its provenance) and by the benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from essaim.protocol.recipe import EvalSpec
from essaim.swarm.data import EvalSet
from essaim.swarm.errors import EvalError
from essaim.swarm.model import LoadedModel

logger = logging.getLogger(__name__)

GENERATE_BATCH = 64
LOSS_BATCH = 8


@dataclass(frozen=True)
class EvalResult:
    metric: str
    value: float
    samples: int
    loss: float = math.nan  # the health signal (see the module doc); NaN when not measured


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _greedy(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int, eos: int | None) -> torch.Tensor:
    """Greedy continuation [batch, <= max_new_tokens] of equal-length prompts, with the KV cache."""
    out = model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True)
    past = getattr(out, "past_key_values", None)
    seq = prompt
    new: list[torch.Tensor] = []
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for step in range(max_new_tokens):
        token = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        new.append(token)
        seq = torch.cat([seq, token], dim=1)
        if eos is not None:
            done |= token.squeeze(1) == eos
            if bool(done.all()):
                break
        if step + 1 == max_new_tokens:
            break
        if past is not None:
            out = model(input_ids=token, attention_mask=torch.ones_like(seq), past_key_values=past, use_cache=True)
            past = out.past_key_values
        else:
            out = model(input_ids=seq, attention_mask=torch.ones_like(seq))
    return torch.cat(new, dim=1)


def _until_eos(tokenizer, tokens: list[int]) -> str:
    """``tokens`` decoded up to the first end-of-sequence token."""
    eos = tokenizer.eos_token_id
    if eos is not None and eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def _continuation(tokenizer, tokens: list[int]) -> str:
    return _until_eos(tokenizer, tokens).split("\n", 1)[0].strip()


def generate_samples(loaded: LoadedModel, prompts: list[str], *, max_new_tokens: int) -> list[str]:
    """The greedy continuation of each prompt, up to ``max_new_tokens`` or the end-of-sequence token
    (what a reader of the job page compares before and after training)."""
    tokenizer = loaded.tokenizer
    out = []
    with _eval_mode(loaded.model):
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
            if not ids:
                out.append("")
                continue
            tokens = _greedy(loaded.model, torch.tensor([ids], dtype=torch.long, device=loaded.device),
                             max_new_tokens, tokenizer.eos_token_id)[0].tolist()
            out.append(_until_eos(tokenizer, tokens))
    return out


def exact_match(loaded: LoadedModel, prompts: list[str], answers: list[str], *, max_new_tokens: int
                ) -> tuple[float, list[str]]:
    """The fraction of prompts whose greedy continuation equals the answer, and the continuations."""
    tokenizer = loaded.tokenizer
    encoded = tokenizer(prompts, add_special_tokens=True, verbose=False)["input_ids"]
    by_length: dict[int, list[int]] = defaultdict(list)  # equal lengths batch without padding
    for i, ids in enumerate(encoded):
        if not ids:
            raise EvalError(f"eval prompt {i} is empty after tokenization; remove it from the eval set")
        by_length[len(ids)].append(i)
    outputs: list[str] = [""] * len(prompts)
    with _eval_mode(loaded.model):
        for indices in by_length.values():
            for start in range(0, len(indices), GENERATE_BATCH):
                chunk = indices[start : start + GENERATE_BATCH]
                prompt = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=loaded.device)
                generated = _greedy(loaded.model, prompt, max_new_tokens, tokenizer.eos_token_id).tolist()
                for i, tokens in zip(chunk, generated, strict=True):
                    outputs[i] = _continuation(tokenizer, tokens)
    hits = sum(out == str(ans).strip() for out, ans in zip(outputs, answers, strict=True))
    return hits / len(prompts), outputs


def answer_loss(loaded: LoadedModel, prompts: list[str], answers: list[str], *, batch_size: int = LOSS_BATCH) -> float:
    """Mean loss of the answers' tokens, each after its prompt (teacher-forced; no generation)."""
    tokenizer = loaded.tokenizer
    rows: dict[int, list[tuple[list[int], int]]] = defaultdict(list)  # equal lengths batch without padding
    for prompt, answer in zip(prompts, answers, strict=True):
        head = tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
        whole = tokenizer(prompt + str(answer), add_special_tokens=True, verbose=False)["input_ids"]
        if len(whole) > len(head) > 0:
            rows[len(whole)].append((whole, len(head)))
    total, count = 0.0, 0
    with _eval_mode(loaded.model):
        for group in rows.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                ids = torch.tensor([w for w, _ in chunk], dtype=torch.long, device=loaded.device)
                logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # [batch, length - 1]
                for row, (_, head) in enumerate(chunk):
                    total += float(nll[row, head - 1 :].sum())
                    count += nll.shape[1] - (head - 1)
    if count == 0:
        raise EvalError("no eval answer has tokens of its own; check the eval set's answer field")
    return total / count


def mean_loss(loaded: LoadedModel, input_ids: torch.Tensor, *, batch_size: int = LOSS_BATCH) -> float:
    """Mean next-token loss over packed sequences (every sequence has the same length)."""
    total, count = 0.0, 0
    with _eval_mode(loaded.model):
        for start in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[start : start + batch_size].to(loaded.device)
            out = loaded.model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch)
            tokens = batch.shape[0] * (batch.shape[1] - 1)
            total += float(out.loss) * tokens
            count += tokens
    if count == 0:
        raise EvalError("the eval sequences are too short to score; add eval data")
    return total / count


def evaluate(loaded: LoadedModel, eval_set: EvalSet, spec: EvalSpec) -> EvalResult:
    """Score ``loaded`` on ``eval_set`` with ``spec.metric``; the model's train/eval mode is restored."""
    metric = spec.metric
    if len(eval_set) == 0:
        raise EvalError("the eval set is empty; add samples to the recipe's eval files")
    if metric == "exact_match":
        if eval_set.metric != "exact_match":
            raise EvalError("exact_match needs an eval set of prompts and answers; load it with this recipe")
        value, _ = exact_match(loaded, eval_set.prompts, eval_set.answers, max_new_tokens=spec.max_new_tokens)
        loss = answer_loss(loaded, eval_set.prompts, eval_set.answers)
    elif metric in ("loss", "perplexity"):
        if eval_set.input_ids is None:
            raise EvalError(f"{metric} needs packed eval sequences; load the eval set with this recipe")
        value = loss = mean_loss(loaded, eval_set.input_ids)
        if metric == "perplexity":
            value = math.exp(min(value, 700.0))
    else:
        raise EvalError(f"unknown eval metric {metric!r}; use loss, perplexity or exact_match")
    result = EvalResult(metric=metric, value=float(value), samples=len(eval_set), loss=float(loss))
    logger.info("eval %s = %.4f on %d samples", result.metric, result.value, result.samples)
    return result
