"""A short plain training loop on the demo data lowers the loss: the compute side learns."""

from __future__ import annotations

from pathlib import Path

import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.data import build_train_dataset, iterate_batches
from essaim.swarm.model import load_model


def test_a_few_steps_on_the_demo_data_lower_the_loss(demo_recipe: Recipe, demo_files: dict[str, Path]) -> None:
    torch.manual_seed(0)
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    data = build_train_dataset(demo_recipe, loaded.tokenizer, files=demo_files)
    params = [p for _, p in loaded.trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=demo_recipe.optimizer.lr, weight_decay=0.0)
    losses = []
    batches = iterate_batches(data, range(data.num_shards), batch_size=demo_recipe.training.batch_size,
                              seed=0, epoch=0)
    for _, batch in zip(range(40), batches, strict=False):
        loss = loaded.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses
