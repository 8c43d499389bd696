"""The built-in job of ``essaim demo``: a tiny language model learns to add, and anyone can check it.

    recipe_path = make_demo_job(out_dir)      # out_dir/recipe.yaml, model/, data/

Everything is generated here, with no network, in about a second:

- ``model/``: a small Llama (random init from a fixed seed, safetensors) with a character-level
  tokenizer built with the ``tokenizers`` library (digits, ``+ - =``, space, newline, ``<s> </s>
  <pad> <unk>``), saved as a transformers fast tokenizer;
- ``data/train.txt``: addition lines such as ``12+7=19``;
- ``data/eval.jsonl``: held-out ``{"prompt": "12+7=", "answer": "19"}`` pairs never seen in training;
- ``recipe.yaml``: a full fine-tune of that model with ``exact_match`` as the eval metric.

A random model answers almost none of the eval prompts; after a few minutes of swarm training it
answers most of them, so the job's provenance shows ``before`` near 0 and ``after`` well above it.
Used by the CLI's ``demo`` command, the integration tests and the benchmarks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from essaim.protocol.recipe import load_recipe
from essaim.swarm.model import quiet_progress

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = "0123456789+-= \n"
DEMO_NAME = "demo-addition"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Knobs of the demo job; the defaults are the ones measured to learn within the demo's budget."""

    max_operand: int = 50  # operands in [0, max_operand)
    eval_size: int = 200
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    sequence_length: int = 64
    shard_size: int = 16
    adapter: str = "full"
    lr: float = 3e-3
    batch_size: int = 16
    # one epoch = 4,800 samples = about 100 local steps per peer with 3 peers; 12 epochs reach ~90%
    target_batch_size: int = 4800
    epochs: int = 12
    averaging: str = "local"
    outer_lr: float = 1.0  # with no outer momentum: plain parameter averaging, measured to learn best here
    checkpoint_every_epochs: int = 2
    max_new_tokens: int = 4


def build_tokenizer(model_max_length: int = 512) -> Any:
    """The demo's character-level tokenizer (``<s>`` prepended to every text), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *CHARACTERS])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    bos = vocab["<s>"]
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def build_model(tokenizer: Any, config: DemoConfig, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=max(256, config.sequence_length),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config)


def addition_pairs(max_operand: int, seed: int) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(max_operand) for b in range(max_operand)]
    random.Random(seed).shuffle(pairs)
    return pairs


def recipe_data(config: DemoConfig, seed: int) -> dict[str, Any]:
    return {
        "version": 1,
        "name": DEMO_NAME,
        "description": "essaim's built-in demo: a tiny Llama learns to add numbers below "
        f"{config.max_operand}; exact-match accuracy on held-out sums shows it learning.",
        "model": {"name_or_path": "model", "dtype": "float32"},
        "dataset": {
            "files": ["data/train.txt"],
            "format": "text",
            "sequence_length": config.sequence_length,
            "shard_size": config.shard_size,
        },
        "adapter": {"type": "full"} if config.adapter == "full" else {"type": "lora", "r": 8, "alpha": 16,
                                                                         "dropout": 0.0},
        "optimizer": {"name": "adamw", "lr": config.lr, "weight_decay": 0.0, "schedule": "constant",
                      "max_grad_norm": 1.0},
        "training": {
            "target_batch_size": config.target_batch_size,
            "batch_size": config.batch_size,
            "epochs": config.epochs,
            "averaging": config.averaging,
            "outer_lr": config.outer_lr,
            "outer_momentum": 0.0,
            "compression": "fp16",
            "matchmaking_time": 3.0,
            "averaging_timeout": 30.0,
            "checkpoint_every_epochs": config.checkpoint_every_epochs,
            "seed": seed,
        },
        "eval": {
            "files": ["data/eval.jsonl"],
            "metric": "exact_match",
            "max_samples": config.eval_size,
            "max_new_tokens": config.max_new_tokens,
            "sample_prompts": ["12+7=", "40+25="],  # shown before and after training on the job page
            "sample_tokens": config.max_new_tokens,
        },
        "hardware": {"min_ram_gb": 1, "gpu": "optional"},
    }


def make_demo_job(out_dir: Path, *, train_lines: int = 20000, seed: int = 0,
                  config: DemoConfig | None = None) -> Path:
    """Write the demo job (model, tokenizer, data, recipe) under ``out_dir``; returns the recipe's path."""
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    pairs = addition_pairs(config.max_operand, seed)
    if config.eval_size >= len(pairs):
        raise ValueError(f"eval_size {config.eval_size} leaves no training pairs below {config.max_operand}")
    held_out, train_pool = pairs[: config.eval_size], pairs[config.eval_size :]

    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    lines = []
    for i in range(train_lines):
        if i % len(train_pool) == 0:
            rng.shuffle(train_pool)
        a, b = train_pool[i % len(train_pool)]
        lines.append(f"{a}+{b}={a + b}\n")
    (data_dir / "train.txt").write_text("".join(lines))
    with (data_dir / "eval.jsonl").open("w") as f:
        for a, b in held_out:
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")

    model_dir = out_dir / "model"
    tokenizer = build_tokenizer(model_max_length=config.sequence_length)
    model = build_model(tokenizer, config, seed)
    with quiet_progress():
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)

    text = yaml.safe_dump(recipe_data(config, seed), sort_keys=False)
    load_recipe(text, source="demo recipe")  # the demo must always be a valid job
    recipe_path = out_dir / "recipe.yaml"
    recipe_path.write_text(f"# essaim demo job, generated by essaim.swarm.demo_task (seed {seed})\n{text}")
    return recipe_path
