"""Validation of volunteers' updates: does an update remove loss, and is it a new one?

The coordinator's averaging peers reduce every round of a public swarm (:mod:`essaim.swarm.aggregation`),
so they hold the update every volunteer of its group sent (each its own slice of it, where a job has
several): in ``local`` averaging (DiLoCo) the pseudo-gradient ``anchor - local``, i.e. where the
volunteer's training took the shared state. Robust
aggregation bounds how far one update moves the average; it cannot tell work from its imitation. A
free rider sends a zero update, noise, or an earlier update again, and claims samples for it. This
module checks a sample of the updates, without bit-exact replay of anyone's steps (consumer GPUs and
CPUs, fp32 and bf16, never agree to the bit):

- **the loss it removes on its own data**: the per-sequence next-token loss of ``BATCH_SEQUENCES``
  sequences of the shards the coordinator assigned the volunteer, at the averaging peer's state
  ``theta`` and at ``theta - STEP_FRACTION * update``. An honest update lowers it on most of those
  sequences: the volunteer descended on them. A zero update changes nothing, noise and flipped
  updates do not lower it. An update passes when the mean drop is positive with a paired t
  statistic of at least ``MIN_T`` (an update of random direction lowers the mean by chance half
  the time; measured, noise of the update's norm reached t 2.3 and 2.7 in some ten checks). It
  fails when it changed no sequence's loss at all (a zero update) or raised the loss with a t of
  ``-AGAINST_T`` or below (noise of the update's norm measured t -2.3 in the validation test, and
  failed 3 of 6 checks with the full model, 2 of 5 with LoRA, in bench/adversary.py). Anything between is
  *inconclusive*, which neither passes nor fails it: late in a job an honest update lowers the
  loss of a volunteer's data little (measured t 1.4 to 4 in many of some sixty honest checks,
  and once, on a loaded machine, a drop at or below 0), and an honest volunteer must not fail
  by chance. Its own data, not the job's at large: late in a job a volunteer that
  passes over its few shards many times per epoch lowers their loss and may raise the others'
  (measured on the demo job: t +4 to +31 on its own shards, down to -18 on the others'). A tenth
  of the update, not all of it: the first-order effect (its direction) is what shows work; a whole
  local step overshoots at times (a newcomer's fresh Adam state raised the loss of its own shards
  with its first update taken whole, t -14, and lowered it taken as a tenth). A volunteer whose
  assignment the coordinator does not know is not checked;
- **that it is new**: a sketch of each update (its values at ``SKETCH_SIZE`` fixed coordinates) is
  compared with the sketches of the last ``REPLAY_MEMORY`` updates checked in this job; a cosine of
  ``REPLAY_COSINE`` or more with any of them is a replay (two honest updates of different epochs or
  volunteers are never that alike: they follow different batches from different states).

Which updates are checked (:class:`Sampler`, BOINC's adaptive replication in spirit): each
volunteer's first ``CHECK_FIRST`` rounds, then one round in ``CHECK_ONE_IN`` at random, at most
``MAX_PER_ROUND`` per round; a volunteer whose failed checks outnumber its passed ones since is
checked in every round it takes part in. The cost is one forward pass of the batch per checked update, plus one for ``theta``, on the
averaging peer, between the round and its outer step. What the coordinator does with a failure
(credit refused, the volunteer dropped from the job) is :mod:`essaim.coordinator.jobrunner`'s.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECK_FIRST = 3
CHECK_ONE_IN = 4
MAX_PER_ROUND = 4
MIN_T = 3.0
AGAINST_T = 2.0
SKETCH_SIZE = 4096
REPLAY_COSINE = 0.999
REPLAY_MEMORY = 64
MIN_SHARED = 64  # coordinates two sketches must both cover to be compared (slices of a job's averaging peers)
BATCH_SEQUENCES = 32
BATCH_SEED = 20261206
STEP_FRACTION = 0.1


@dataclass(slots=True)
class Check:
    """One checked update: ``passed``; the mean per-sequence loss drop it brought (``drop``, nats)
    and its paired t statistic; ``why`` it failed ("" when it passed); ``inconclusive``: it neither
    passed nor failed (the loss dropped, without significance)."""

    passed: bool
    drop: float
    t: float
    why: str = ""
    inconclusive: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drop"], d["t"] = round(self.drop, 6), round(self.t, 3)
        return d


def judge(drop: float, t: float, replay: str = "") -> Check:
    """The check of an update whose tenth dropped its data's loss by ``drop`` (mean, nats) with
    paired t statistic ``t``; ``replay`` says whose earlier update it repeats ("" when new)."""
    if replay:
        return Check(False, drop, t, replay)
    if (drop == 0.0 and t == 0.0) or (drop < 0 and t <= -AGAINST_T) or not math.isfinite(drop):
        return Check(False, drop, t, f"it removed no loss on its own data (mean drop {drop:+.5f} nats at a "
                                     f"tenth of it, t {t:.1f})")
    if drop <= 0:
        return Check(False, drop, t, f"its data's loss did not drop, without significance (t {t:.1f})",
                     inconclusive=True)
    if t < MIN_T:
        return Check(False, drop, t, f"its data's loss dropped without significance (t {t:.1f})", inconclusive=True)
    return Check(True, drop, t)


class Sampler:
    """Which senders of a round to check (see the module docstring); kept across rounds by the reducer."""

    def __init__(self, *, seed: int | None = None) -> None:
        self.rounds: dict[str, int] = {}
        self.suspect: set[str] = set()
        self._random = random.Random(seed)

    def choose(self, peers: Iterable[str]) -> set[str]:
        due, rest = [], []
        for peer in peers:
            seen = self.rounds.get(peer, 0)
            self.rounds[peer] = seen + 1
            if peer in self.suspect or seen < CHECK_FIRST:
                due.append(peer)
            elif self._random.random() < 1.0 / CHECK_ONE_IN:
                rest.append(peer)
        self._random.shuffle(due)
        return set((due + rest)[:MAX_PER_ROUND])

    def note(self, peer: str, cleared: bool) -> None:
        """After a check: ``cleared`` when the peer's failures are all made up for by passes."""
        (self.suspect.discard if cleared else self.suspect.add)(peer)


def paired_drop(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """The mean of ``before - after`` (per-sequence losses) and its paired t statistic (inf when
    every sequence dropped by the same amount, 0 when none moved)."""
    d = (before - after).to(torch.float64)
    mean = float(d.mean())
    if d.numel() < 2:
        return mean, 0.0
    std = float(d.std())
    if std == 0.0:
        return mean, math.copysign(math.inf, mean) if mean else 0.0
    return mean, mean / (std / math.sqrt(d.numel()))


class Validator:
    """Checks updates against the averaging peer's model (see the module docstring).

    ``params`` are the averaged tensors' parameters in the averager's order (the model's trainable
    parameters); ``input_ids`` the job's packed training sequences, in shards of ``shard_size``;
    ``shards_of(peer)`` the shards assigned to the volunteer behind a peer id (None: unknown)."""

    def __init__(self, model: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]],
                 input_ids: torch.Tensor, shard_size: int,
                 shards_of: Callable[[str], Sequence[int] | None]) -> None:
        self.model = model
        self.params = list(params)
        self.input_ids = input_ids
        self.shard_size = shard_size
        self.shards_of = shards_of
        self.size = sum(p.numel() for _, p in self.params)
        generator = torch.Generator().manual_seed(BATCH_SEED)
        self.coordinates = torch.randperm(self.size, generator=generator)[:SKETCH_SIZE].sort().values
        # (peer, sketch) of the updates checked last
        self.sketches: deque[tuple[str, torch.Tensor]] = deque(maxlen=REPLAY_MEMORY)

    @classmethod
    def for_job(cls, loaded: Any, dataset: Any, shards_of: Callable[[str], Sequence[int] | None]) -> Validator:
        return cls(loaded.model, loaded.trainable_parameters(), dataset.input_ids, dataset.shard_size, shards_of)

    def batch(self, shards: Sequence[int]) -> torch.Tensor:
        """``BATCH_SEQUENCES`` sequences of ``shards``, drawn with a fixed seed."""
        n = self.input_ids.shape[0]
        rows = torch.tensor([r for s in sorted(set(shards))
                             for r in range(s * self.shard_size, min((s + 1) * self.shard_size, n))], dtype=torch.long)
        generator = torch.Generator().manual_seed(BATCH_SEED)
        return self.input_ids[rows[torch.randperm(len(rows), generator=generator)[:BATCH_SEQUENCES]]]

    @torch.no_grad()
    def losses(self, batch: torch.Tensor, overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sequence mean next-token loss of ``batch``, with ``overrides`` for named parameters."""
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            batch = batch.to(device)
            kwargs = {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
            if overrides:
                out = torch.func.functional_call(self.model, overrides, args=(), kwargs=kwargs, strict=False)
            else:
                out = self.model(**kwargs)
            logits = out.logits[:, :-1].float()
            targets = batch[:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            return per_token.reshape(targets.shape).mean(dim=1).cpu()
        finally:
            self.model.train(was_training)

    def _sketch(self, update: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The update's values at the fixed coordinates (``SKETCH_SIZE`` of them), NaN at those
        outside its slice: slices of the same update from rounds cut differently still compare."""
        inside = (self.coordinates >= offset) & (self.coordinates < offset + update.numel())
        sketch = torch.full((self.coordinates.numel(),), math.nan, dtype=torch.float64)
        sketch[inside] = update[(self.coordinates[inside] - offset).to(update.device)].to(torch.float64).cpu()
        return sketch

    def _stepped(self, update: torch.Tensor, offset: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parameters the slice ``update`` (from ``offset``) touches, ``state``'s moved by ``STEP_FRACTION`` of it."""
        overrides, start, end = {}, 0, offset + update.numel()
        for name, param in self.params:
            stop = start + param.numel()
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                flat = state[name].reshape(-1).clone()
                piece = update[lo - offset: hi - offset].to(param.device, param.dtype)
                flat[lo - start: hi - start] -= STEP_FRACTION * piece
                overrides[name] = flat.reshape(param.shape)
            start = stop
        return overrides

    def _replayed(self, peer: str, sketch: torch.Tensor, earlier: Collection[tuple[str, torch.Tensor]]) -> str:
        """Whose earlier update ``sketch`` repeats ("" when none), compared on the coordinates both
        sketches cover (at least ``MIN_SHARED`` of them)."""
        for owner, other in earlier:
            shared = ~torch.isnan(sketch) & ~torch.isnan(other)
            if int(shared.sum()) < MIN_SHARED:
                continue
            a, b = sketch[shared], other[shared]
            norms = float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b))
            if norms and float(a @ b) / norms >= REPLAY_COSINE:
                whose = "its own" if owner == peer else "another volunteer's"
                return f"it repeats {whose} earlier update"
        return ""

    def check(self, updates: dict[str, torch.Tensor], *, offset: int = 0,
              base: Sequence[torch.Tensor] | None = None) -> dict[str, Check]:
        """Check each flat update: the values of the averaged vector (the model's trainable
        parameters, flattened in order) from ``offset`` on, all of it or the slice one of a job's
        several averaging peers reduced (the rest of the state is left as it is: an honest slice
        still removes loss, a zero or random one still does not). Peers whose assignment is
        unknown, or whose update does not fit the vector, are left out (the latter logged).

        ``base``: the state the updates were computed from, one tensor per parameter (default: the
        model's parameters). The averaging peer passes its outer optimizer's, which hold the last
        round's step as soon as it ran: its model's own parameters take it up later, and a check
        against them judged an honest update of a short epoch from the state before the last round
        (a volunteer's update then "raised" its loss, t -3 to -10 in the demo job)."""
        out: dict[str, Check] = {}
        state = {name: (param.detach() if base is None else base[i].detach().to(param.device, param.dtype)
                        .reshape(param.shape)) for i, (name, param) in enumerate(self.params)}
        earlier = list(self.sketches)  # this round's updates are not compared with each other
        before: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        for peer, update in updates.items():
            update = update.reshape(-1)
            if offset < 0 or update.numel() == 0 or offset + update.numel() > self.size:
                logger.warning("validation: %s's update has %d values from %d, the model %d", peer, update.numel(),
                               offset, self.size)
                continue
            shards = self.shards_of(peer)
            if not shards:
                continue
            key = tuple(sorted(set(shards)))
            if key not in before:
                batch = self.batch(key)
                before[key] = (batch, self.losses(batch, state if base is not None else None))
            batch, losses = before[key]
            sketch = self._sketch(update, offset)
            replay = self._replayed(peer, sketch, earlier)
            self.sketches.append((peer, sketch))
            after = self.losses(batch, {**(state if base is not None else {}), **self._stepped(update, offset, state)})
            if not bool(torch.isfinite(after).all()):
                out[peer] = Check(False, -math.inf, -math.inf, "its model's loss is not a number")
                continue
            drop, t = paired_drop(losses, after)
            out[peer] = judge(drop, t, replay)
        return out
