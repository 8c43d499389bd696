"""Validation of volunteers' updates (essaim.swarm.validation): work is told from its imitations."""

from __future__ import annotations

import math

import pytest
import torch
from essaim.swarm.validation import CHECK_FIRST, MAX_PER_ROUND, Sampler, Validator, judge, paired_drop

transformers = pytest.importorskip("transformers")
VOCAB, SEQ = 40, 24


def _data(n: int, seed: int) -> torch.Tensor:
    """Sequences of a simple language: counting up modulo VOCAB from a random start."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, VOCAB, (n, 1), generator=g)
    return (starts + torch.arange(SEQ)) % VOCAB


@pytest.fixture(scope="module")
def setup() -> tuple[Validator, torch.Tensor, torch.nn.Module]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    anchor = torch.cat([p.detach().reshape(-1).clone() for _, p in named])
    # an honest volunteer: a few Adam steps on its own shard of the same language
    local = transformers.GPT2LMHeadModel(config)
    local.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(local.parameters(), lr=3e-3)
    data = _data(64, seed=1)  # 4 shards of 16; the volunteer's are the first two
    for step in range(8):
        batch = data[(step % 4) * 8: (step % 4 + 1) * 8]
        loss = local(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    trained = torch.cat([p.detach().reshape(-1) for n, p in local.named_parameters() if p.requires_grad])
    validator = Validator(model, named, data, 16, lambda peer: None if peer == "stranger" else [0, 1])
    return validator, anchor - trained, model


def test_an_honest_update_passes(setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    validator, honest, _ = setup
    validator.sketches.clear()
    check = validator.check({"alice": honest})["alice"]
    assert check.passed and check.drop > 0 and check.t >= 3.0, check
    # its tenth (a volunteer that computed a tenth as many samples) still removes loss; after
    # alice's, the same direction would be a replay however scaled
    assert not validator.check({"bob": honest / 10})["bob"].passed
    validator.sketches.clear()
    small = validator.check({"bob": honest / 10})["bob"]
    assert small.passed, small


def test_an_update_computed_in_bfloat16_passes(setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    """A volunteer on other hardware (bf16 weights, as on many GPUs) is checked by the same
    float32 model: its update, as close to the float32 one as bf16 allows, passes."""
    validator, _, model = setup
    validator.sketches.clear()
    local = transformers.GPT2LMHeadModel(model.config).to(torch.bfloat16)
    local.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    opt = torch.optim.Adam(local.parameters(), lr=3e-3)
    data = validator.input_ids
    for step in range(8):
        batch = data[(step % 4) * 8: (step % 4 + 1) * 8]
        local(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    anchor = torch.cat([p.detach().reshape(-1) for _, p in validator.params])
    trained = torch.cat([p.detach().float().reshape(-1) for n, p in local.named_parameters() if p.requires_grad])
    check = validator.check({"gpu-volunteer": anchor - trained})["gpu-volunteer"]
    assert check.passed, check


@pytest.mark.parametrize("attack", ["zero", "noise", "sign", "scale"])
def test_imitations_of_work_fail(setup: tuple[Validator, torch.Tensor, torch.nn.Module], attack: str) -> None:
    validator, honest, _ = setup
    validator.sketches.clear()
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(honest.shape, generator=g)
    bad = {"zero": torch.zeros_like(honest), "noise": noise * honest.norm() / noise.norm(),
           "sign": -honest, "scale": honest * 1000}[attack]
    check = validator.check({"mallory": bad})["mallory"]
    assert not check.passed, check
    # noise may move the loss a little either way by chance: then the check is inconclusive, not passed
    assert check.inconclusive if attack == "noise" and check.t > -2.0 else (
        ("removed no loss on its own data" in check.why) or ("not a number" in check.why)), check


def test_a_drop_without_significance_is_inconclusive() -> None:
    assert judge(0.001, 1.2).inconclusive and not judge(0.001, 1.2).passed
    assert judge(0.001, 2.7).inconclusive  # noise of an update's norm reached t 2.7
    assert judge(0.001, 3.5).passed
    for drop, t in ((0.0, 0.0), (-0.01, -3.0), (-0.001, -2.0), (math.nan, 0.0)):
        check = judge(drop, t)
        assert not check.passed and not check.inconclusive and "removed no loss" in check.why
    # an honest update late in a job may not lower its data's loss at all by chance: no failure
    for drop, t in ((-0.0001, -0.5), (-0.0002, -1.9), (0.0, 0.4)):
        check = judge(drop, t)
        assert check.inconclusive and not check.passed and "did not drop" in check.why
    assert "repeats" in judge(0.5, 40.0, "it repeats its own earlier update").why


def test_a_replayed_update_fails(setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    validator, honest, _ = setup
    validator.sketches.clear()
    assert validator.check({"alice": honest})["alice"].passed
    again = validator.check({"mallory": honest.clone()})["mallory"]
    assert not again.passed and "another volunteer's earlier update" in again.why, again
    own = validator.check({"alice": honest.clone()})["alice"]
    assert not own.passed and "its own earlier update" in own.why, own


def test_the_model_is_left_as_it_was(setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    validator, honest, model = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    validator.check({"alice": honest * 3})
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_an_update_of_the_wrong_size_or_an_unknown_assignment_is_left_out(
        setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    validator, honest, _ = setup
    assert validator.check({"x": torch.cat([honest, honest[:1]])}) == {}
    assert validator.check({"x": honest}, offset=1) == {}  # past the vector's end
    assert validator.check({"x": honest[:0]}) == {}
    assert validator.check({"stranger": honest}) == {}


@pytest.mark.parametrize("half", ["first", "second"])
def test_a_slice_of_an_update_is_checked_as_the_whole(setup: tuple[Validator, torch.Tensor, torch.nn.Module],
                                                       half: str) -> None:
    """A job with several averaging peers: each reduces, and checks, its own slice of every
    update. An honest slice passes, a zero or flipped one fails, a replay is one of the same slice."""
    validator, honest, model = setup
    cut = honest.numel() // 2
    offset, piece = (0, honest[:cut]) if half == "first" else (cut, honest[cut:])
    validator.sketches.clear()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    check = validator.check({"alice": piece.clone()}, offset=offset)["alice"]
    assert check.passed, check
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    for bad in (torch.zeros_like(piece), -piece):
        failed = validator.check({"mallory": bad}, offset=offset)["mallory"]
        assert not failed.passed and not failed.inconclusive and "removed no loss" in failed.why, failed
    replay = validator.check({"mallory": piece.clone()}, offset=offset)["mallory"]
    assert "another volunteer's earlier update" in replay.why, replay
    # the other slice is not a replay of this one; a slice cut elsewhere, of the same update, is
    other = (cut, honest[cut:]) if half == "first" else (0, honest[:cut])
    assert "repeats" not in validator.check({"bob": other[1].clone()}, offset=other[0])["bob"].why
    shifted = cut // 2
    again = validator.check({"mallory": honest[shifted:shifted + cut].clone()}, offset=shifted)["mallory"]
    assert "repeats" in again.why, again


def test_the_batch_is_the_volunteers_own_data(setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    validator, _, _ = setup
    batch = validator.batch([1])
    rows = {tuple(r.tolist()) for r in validator.input_ids[16:32]}
    assert len(batch) == 16 and all(tuple(r.tolist()) in rows for r in batch)
    assert torch.equal(batch, validator.batch([1]))  # the same every time


def test_the_sampler_checks_newcomers_and_suspects_every_round() -> None:
    sampler = Sampler(seed=0)
    peers = [f"p{i}" for i in range(3)]
    for _ in range(CHECK_FIRST):
        assert sampler.choose(peers) == set(peers)
    later = [sampler.choose(peers) for _ in range(200)]
    share = sum(len(c) for c in later) / (200 * len(peers))
    assert 0.15 < share < 0.35, share  # one round in CHECK_ONE_IN
    sampler.note("p1", False)
    assert all("p1" in sampler.choose(peers) for _ in range(20))
    sampler.note("p1", True)
    many = [f"n{i}" for i in range(10)]
    assert len(sampler.choose(many)) == MAX_PER_ROUND


def test_paired_drop() -> None:
    assert paired_drop(torch.tensor([2.0, 2.0]), torch.tensor([2.0, 2.0])) == (0.0, 0.0)
    mean, t = paired_drop(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([1.5, 2.4, 3.6]))
    assert mean == pytest.approx(0.5) and t > 4
    assert paired_drop(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0])) == (1.0, math.inf)


def test_updates_are_checked_from_the_state_they_were_computed_from(
        setup: tuple[Validator, torch.Tensor, torch.nn.Module]) -> None:
    """The averaging peer's model takes up the last round's outer step later than its outer optimizer
    holds it: checked against the model's parameters, an honest update computed from the new state
    looked as if it raised the loss. Checked from ``base`` (the state it was computed from), it passes."""
    validator, honest, model = setup
    named = validator.params
    anchor = torch.cat([p.detach().reshape(-1) for _, p in named])
    moved = anchor - honest  # the state after a round that took the honest update whole
    shapes = [p.shape for _, p in named]
    base = list(torch.split(moved, [math.prod(s) for s in shapes]))
    base = [b.reshape(s) for b, s in zip(base, shapes, strict=True)]
    validator.sketches.clear()
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(honest.shape, generator=g)
    assert not validator.check({"z": torch.zeros_like(honest)}, base=base)["z"].passed
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    checked = validator.check({"alice": honest * 0.5, "noise": noise * honest.norm() / noise.norm()}, base=base)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not checked["noise"].passed, checked

