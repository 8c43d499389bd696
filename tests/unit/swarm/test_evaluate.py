"""Evaluation: exact_match on scripted and real models, loss and perplexity."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from essaim.protocol.recipe import EvalSpec, Recipe
from essaim.swarm.data import EvalSet, load_eval_set
from essaim.swarm.demo_task import build_tokenizer
from essaim.swarm.evaluate import _greedy, evaluate
from essaim.swarm.model import LoadedModel, load_model


class ScriptedModel(torch.nn.Module):
    """Answers each prompt with a fixed continuation (no KV cache: the evaluator recomputes)."""

    def __init__(self, tokenizer, replies: dict[str, str]) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.replies = replies
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_kwargs):
        vocab = len(self.tokenizer)
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], vocab)
        for row, ids in enumerate(input_ids.tolist()):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            prompt = next(p for p in self.replies if text.startswith(p))
            reply = self.replies[prompt]
            done = len(text) - len(prompt)
            nxt = (self.tokenizer(reply[done], add_special_tokens=False)["input_ids"][0] if done < len(reply)
                   else self.tokenizer.eos_token_id)
            logits[row, -1, nxt] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_exact_match_compares_the_first_line_of_the_continuation() -> None:
    tokenizer = build_tokenizer()
    replies = {"1+1=": "2", "2+2=": " 4 \n5", "3+3=": "66", "10+10=": "20\n"}
    model = ScriptedModel(tokenizer, replies)
    model.train()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, device="cpu", dtype=torch.float32, adapter="full")
    eval_set = EvalSet(metric="exact_match", prompts=list(replies), answers=["2", "4", "6", "20"])
    result = evaluate(loaded, eval_set, EvalSpec(metric="exact_match", max_new_tokens=4))
    assert result.metric == "exact_match" and result.samples == 4
    assert result.value == pytest.approx(0.75)
    assert model.training  # the mode is restored


def test_greedy_with_the_kv_cache_matches_generate(demo_recipe: Recipe, demo_files: dict[str, Path]) -> None:
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    prompt = torch.tensor([loaded.tokenizer("12+7=")["input_ids"], loaded.tokenizer("33+4=")["input_ids"]])
    loaded.model.eval()
    with torch.no_grad():
        ours = _greedy(loaded.model, prompt, 5, eos=None)
        theirs = loaded.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                                       min_new_tokens=5, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert torch.equal(ours, theirs[:, prompt.shape[1]:])


def test_an_untrained_model_scores_near_zero(demo_recipe: Recipe, demo_files: dict[str, Path]) -> None:
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    eval_set = load_eval_set(demo_recipe, loaded.tokenizer, files=demo_files)
    assert demo_recipe.eval is not None and eval_set is not None
    result = evaluate(loaded, eval_set, demo_recipe.eval)
    assert result.samples == 200 and result.value <= 0.05
    assert loaded.model.training
    # its health signal: the answers' loss, about uniform over the vocabulary at a random init
    assert result.loss == pytest.approx(math.log(len(loaded.tokenizer)), rel=0.2)
    # a wrecked model (what one x1000 update leaves) is far worse, whatever its accuracy
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.mul_(30.0)
    wrecked = evaluate(loaded, eval_set, demo_recipe.eval)
    assert not wrecked.loss < result.loss + 1.0, (wrecked, result)


def test_loss_and_perplexity(demo_recipe: Recipe, demo_files: dict[str, Path], recipe_with) -> None:
    recipe = recipe_with(demo_recipe, eval={"files": ["data/train.txt"], "metric": "loss", "max_samples": 4})
    loaded = load_model(recipe, files=demo_files, device="cpu")
    eval_set = load_eval_set(recipe, loaded.tokenizer, files=demo_files)
    assert recipe.eval is not None and eval_set is not None
    loss = evaluate(loaded, eval_set, recipe.eval)
    ppl = evaluate(loaded, eval_set, recipe_with(recipe, eval={"metric": "perplexity"}).eval)
    # a random init predicts about uniformly over the vocabulary
    assert loss.value == pytest.approx(math.log(len(loaded.tokenizer)), rel=0.2)
    assert ppl.value == pytest.approx(math.exp(loss.value), rel=1e-5)
    assert loss.samples == 4 and loss.loss == loss.value and ppl.loss == pytest.approx(loss.value)
