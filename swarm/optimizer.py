"""The swarm's optimizer: hivemind.Optimizer configured from a recipe, in either averaging mode.

    opt = build_optimizer(loaded, recipe, dht=dht, run_id=job_id, private_key=key)
    opt.join()                       # a late joiner loads the swarm's state before contributing
    loss.backward(); opt.step(batch_size=len(batch))   # accumulates, averages, steps per the mode
    opt.local_epoch, opt.num_peers

One *epoch* of the swarm is ``training.target_batch_size`` samples gathered across all peers.

``sync`` mode: gradients are accumulated toward the target batch, averaged with the peers (all-reduce)
and the recipe's optimizer (AdamW...) steps on the averaged gradient, like one big synchronous
batch. hivemind's default layout: the optimizer runs on a float32 host copy of the parameters.

``local`` mode (DiLoCo, Douillard et al. 2023): each peer takes local optimizer steps on every
micro-batch. At the end of an epoch the peers average their *pseudo-gradients* (the anchor, i.e.
the parameters all peers shared at the start of the epoch, minus the local parameters) weighted
by their samples, and an outer SGD (Nesterov momentum ``training.outer_momentum``) at ``training.outer_lr`` moves the
anchor along that average; every peer then restarts from the new anchor. hivemind runs this as
its gradient-averaging mode on the anchor tensors, with a gradient averager that reports the
pseudo-gradient instead of accumulated gradients (:class:`PseudoGradientAverager`). With
``outer_lr=1`` and ``outer_momentum=0`` this is plain parameter averaging.

With ``training.overlap_averaging`` (the default) the averaging round does not stall training: at
the end of epoch k the peer hands its pseudo-gradient to a background round and goes on training
from where it is. When the outer step lands (during epoch k+1), the peer moves its parameters by
``new anchor - parameters at the end of epoch k``: it keeps the progress it made meanwhile and takes
the swarm's update, one epoch late (the overlap of Streaming DiLoCo, Douillard et al. 2025). A peer
waits for a round only when the next epoch ends before it. This costs two more float32 copies of
the trainable weights (hivemind's host copy of the anchors, and the parameters at the boundary).

Only the model's trainable parameters (LoRA weights, or all weights for a full fine-tune) are given
to hivemind, so only they are averaged and shared. The learning-rate schedule
(``optimizer.schedule``, ``warmup_epochs``) follows the swarm epoch, not local steps.

Where hivemind's defaults are changed, and why: a peer alone in the swarm ends an epoch only on its
own samples, checked against a fresh look at the swarm (hivemind's time estimate made peers that
start together step apart), and it does not arrange averaging rounds in advance (they can only time
out and keep it busy); averaging chunks may take ``MIN_CHUNK_TIMEOUT_S`` on a busy machine;
gradient buffers are float32 and are never served as "state" to newcomers. Gradient rounds are
tagged with the epoch they close, and a group's leader refuses members of another epoch's round
(hivemind's groups carry no epoch: a peer a round late joined the next epoch's group and stalled
it); a round whose all-reduce failed is not retried (its group's members have ended that epoch's
round, and the retry held the next rounds); a client-mode peer gives up a round whose group has
closed instead of waiting out its timeout; a reducer holds parts that arrive a moment before it
began the round (``GROUP_REGISTRATION_WAIT_S``) instead of refusing them; under robust aggregation
a volunteer never leads a group (it could hold no reducer) and joins the coordinator's averaging
peers' groups, and in overlapped mode the averaging peer leads each round from the moment the
volunteers' reports show the epoch ended rather than at its own estimate of that moment.

Knobs: ``training.matchmaking_time`` — raise it when logs say "averaged ... with N peers" with N
below the swarm size; ``training.averaging_timeout`` — raise it when logs say "Proceeding with local
gradients" or "Averaging failed" often. Used by the trainer and by the coordinator's keeper
(:func:`build_auxiliary_optimizer`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
import time
import typing
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import hivemind
import torch
from essaim.protocol.recipe import OptimizerSpec, Recipe
from essaim.swarm.admission import Admission, AdmittedServicer
from essaim.swarm.aggregation import Gathered, NormHistory, RobustAllReduceRunner, mark_repeats, suspects
from essaim.swarm.auth import SwarmAuthorizer
from essaim.swarm.errors import TrainingError
from essaim.swarm.identity import RSAPrivateKey
from essaim.swarm.records import owner_peer_id
from essaim.swarm.rounds import ALONE, RoundOutcome, describe_failure
from essaim.swarm.validation import Check, Sampler, Validator
from hivemind.averaging.allreduce import AveragingMode
from hivemind.averaging.control import AveragingStage
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.load_balancing import load_balance_peers
from hivemind.averaging.matchmaking import MatchmakingException
from hivemind.averaging.partition import AllreduceException
from hivemind.compression import (
    CompressionBase,
    Float16Compression,
    NoCompression,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
    deserialize_torch_tensor,
)
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.asyncio import achain, aiter_with_timeout, anext, as_aiter, azip, enter_asynchronously
from hivemind.utils.streaming import combine_from_streaming
from hivemind.utils.timed_storage import ValueWithExpiration

logger = logging.getLogger(__name__)
REPORT_EVERY_S = 0.5  # a peer's progress record in the DHT is at most this stale
AHEAD_WARNING_EVERY_S = 60.0  # how often a volunteer logs that it ignores records ahead of the leaders
ROUNDS_KEPT = 64
INNER_WARMUP_STEPS = 100  # a newcomer's inner learning rate ramps up over its first steps (see SwarmOptimizer.step)
# a state asked of the averaging peer while its epoch's step is pending: how long it waits for the
# step to land; a peer that loaded a state a step behind the swarm loads again, this often
PENDING_STEP_WAIT_S = 2.0
STALE_STATE_RETRIES = 5
STALE_STATE_WAIT_S = 1.0
# a sender's failed validation checks less its passed ones (never below 0) at which it is refused
# for the job (honest updates never failed one in the measured runs once newcomers ramp their
# learning rate up; a noise update passed once in some ten checks, t 2.3)
FAILS_TO_DROP = 3
AVERAGING_PEER_WEIGHT = 1e-3  # never 0: a group of weights 0 averages to NaN
QUIET_SWARM_S = 10.0  # the averaging peer takes no step while no volunteer reported for this long
ASSIST_EVERY_S = 0.1  # how often the coordinator's averaging peer looks whether a round is due
LATE_MATCHMAKING = 1.5  # a client-mode round still without a group this many matchmaking periods late gives up
GROUP_REGISTRATION_WAIT_S = 5.0  # how long a reducer holds parts that came before it began their round
NO_STATE_AVERAGING = 2**31 - 1  # hivemind's average_state_every for "never"
RESYNC_RETRY_S = 10.0  # a job's second averaging peer that could not load the first one's state asks again after
ROUND_EPOCH = "epoch"  # the key of a gradient round's tag in its members' gathered data
# the round (hivemind's StepControl) the current task of an averager's process runs (_GradAverager._step)
_ROUND: contextvars.ContextVar[Any] = contextvars.ContextVar("essaim_round", default=None)

OUTER_MOMENTUM = 0.9
MIN_CHUNK_TIMEOUT_S = 5.0
EIGHT_BIT_MIN_SIZE = 2**16  # smaller tensors travel in fp16: 8-bit codebooks cost more than they save


def compression_for(name: str) -> CompressionBase:
    """The hivemind codec for a recipe's ``training.compression``."""
    if name == "none":
        return NoCompression()
    if name == "fp16":
        return Float16Compression()
    if name == "8bit":
        return SizeAdaptiveCompression(
            threshold=EIGHT_BIT_MIN_SIZE, less=Float16Compression(), greater_equal=Uniform8BitQuantization()
        )
    raise TrainingError(f"unknown compression {name!r}; use none, fp16 or 8bit")


def lr_factor(spec: OptimizerSpec, total_epochs: int) -> Callable[[int], float]:
    """Multiplier of ``spec.lr`` at a swarm epoch: linear warmup, then constant, linear or cosine decay."""
    warmup = spec.warmup_epochs
    decay_epochs = max(1, total_epochs - warmup)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = min(1.0, (epoch - warmup) / decay_epochs)
        if spec.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if spec.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def torch_optimizer_factory(spec: OptimizerSpec) -> Callable[[Any], torch.optim.Optimizer]:
    """A callable(params) -> torch optimizer for ``spec`` (adamw, adam or sgd)."""
    if spec.name == "adamw":
        return partial(torch.optim.AdamW, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.name == "adam":
        return partial(torch.optim.Adam, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return partial(torch.optim.SGD, lr=spec.lr, momentum=spec.betas[0], weight_decay=spec.weight_decay)
    raise TrainingError(f"unknown optimizer {spec.name!r}; use adamw, adam or sgd")


@dataclass(frozen=True, slots=True)
class OptimizerSettings:
    """What build_optimizer hands to hivemind, derived from a recipe (see :func:`optimizer_settings`)."""

    run_id: str
    mode: str  # "sync" | "local"
    target_batch_size: int
    batch_size_per_step: int
    epochs: int
    matchmaking_time: float
    averaging_timeout: float
    compression: CompressionBase
    outer_lr: float
    outer_momentum: float
    max_grad_norm: float | None
    average_state_every: int
    load_state_timeout: float
    overlap: bool = False  # local mode: average in the background (training.overlap_averaging)


def optimizer_settings(recipe: Recipe, *, run_id: str, average_state_every: int = 5) -> OptimizerSettings:
    training = recipe.training
    return OptimizerSettings(
        run_id=run_id,
        mode=training.averaging,
        target_batch_size=training.target_batch_size,
        batch_size_per_step=training.batch_size,
        epochs=training.epochs,
        matchmaking_time=training.matchmaking_time,
        averaging_timeout=training.averaging_timeout,
        compression=compression_for(training.compression),
        outer_lr=training.outer_lr,
        outer_momentum=recipe.training.outer_momentum,
        max_grad_norm=recipe.optimizer.max_grad_norm,
        average_state_every=average_state_every,
        load_state_timeout=max(60.0, 2 * training.averaging_timeout),
        overlap=training.averaging == "local" and training.overlap_averaging,
    )


class _GradAverager(AdmittedServicer, GradientAverager):
    """hivemind's GradientAverager with float32 host buffers that never serves its buffers as
    "state" (newcomers need parameters and optimizer statistics, not last epoch's gradients)."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], *, aggregation: str = "mean",
                 reducers: Sequence[str] | None = None, admission: Admission | None = None,
                 validating: bool = False, leads: bool = True, **kwargs: Any) -> None:
        parameters = tuple(parameters)
        # set before hivemind starts the averager's process, which reads them
        self.admission = admission
        self.aggregation = aggregation
        self.validating = validating
        self.leads = leads
        self.reducers = frozenset(reducers) if reducers is not None else None
        self.reducer_order = tuple(reducers or ())
        # hivemind warns (and may deadlock) when a matchmaking request can outlast matchmaking itself
        kwargs.setdefault("request_timeout", min(3.0, kwargs.get("min_matchmaking_time", 5.0) / 2))
        kwargs.setdefault(
            "averaged_grads", tuple(torch.zeros(p.shape, dtype=torch.float32).share_memory_() for p in parameters)
        )
        kwargs["allow_state_sharing"] = False
        super().__init__(parameters, **kwargs)
        accumulators: tuple[torch.Tensor, ...] | None = getattr(self, "_local_accumulators", None)
        if accumulators is not None:  # accumulate in float32 even when the model computes in bf16
            self._local_accumulators = tuple(acc.float() for acc in accumulators)

    def load_state_from_peers(self, wait: bool = True, timeout: float | None = None) -> None:
        return None

    # Every gradient round is tagged with the epoch it closes (the gathered data of its members),
    # and a leader refuses a member of another epoch's round. hivemind's groups carry no epoch: a
    # peer that began epoch k's round late joined the group of epoch k+1 with epoch k's update,
    # then (overlapped) waited for that round at its next epoch's end, reporting nothing; the
    # averaging peer, which ends an epoch on the volunteers' reports, waited for them in turn,
    # and the whole group timed out.
    epoch_of_round: Callable[[], int] | None = None  # set by the optimizer: the epoch a new round closes

    round_timeout: float | None = None  # set by the optimizer: training.averaging_timeout

    def schedule_step(self, scheduled_time: float | None = None, **kwargs: Any) -> Any:
        if kwargs.get("gather") is None and self.epoch_of_round is not None:
            kwargs["gather"] = {ROUND_EPOCH: int(self.epoch_of_round())}
        if kwargs.get("timeout") is None and self.round_timeout is not None:
            # a round begun without one arranged ahead has no deadline in hivemind: once the
            # optimizer stopped waiting for it, it went on retrying and held the matchmaking
            kwargs["timeout"] = self.round_timeout
        return super().schedule_step(scheduled_time, **kwargs)

    async def rpc_join_group(  # annotated for hivemind's servicer, which reads the protobuf types from them
        self, request: averaging_pb2.JoinRequest, context: P2PContext,
    ) -> typing.AsyncIterator[averaging_pb2.MessageFromLeader]:
        step = getattr(getattr(self, "_matchmaking", None), "step_control", None)
        ours = round_epoch(self.serializer, step.data_for_gather) if step is not None else None
        theirs = round_epoch(self.serializer, request.gather)
        if ours is not None and theirs != ours:
            logger.debug("refused %s: its round closes epoch %s, ours %s", context.remote_id, theirs, ours)
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.BAD_GROUP_KEY)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    @property
    def follows_only(self) -> bool:
        """Under robust aggregation a volunteer never leads a group (see :meth:`_step`)."""
        return self.aggregation == "robust" and self.reducers is not None and str(self.peer_id) not in self.reducers

    async def _step(self, *, step: Any, future_for_init: Any) -> Any:
        if self.follows_only or not self.leads:
            # follow only: a group this peer led would hold no reducer (and under robust
            # aggregation no full volunteer reduces), so it joins the averaging peers' groups; a
            # job's second averaging peer joins the first one's group (it reduces a share of it):
            # two leaders would split a round into two groups, two averages, two states
            self._matchmaking.client_mode = True
        _ROUND.set(step)  # this task's own context (hivemind runs each step in a task of its own)
        return await super()._step(step=step, future_for_init=future_for_init)

    async def rpc_aggregate_part(  # annotated for hivemind's servicer, as rpc_join_group
        self, stream: typing.AsyncIterator[averaging_pb2.AveragingData], context: P2PContext,
    ) -> typing.AsyncIterator[averaging_pb2.AveragingData]:
        """hivemind's, except that a member whose parts arrive before this peer began the round
        (its own trigger: the end of its epoch) waits for it, at most ``GROUP_REGISTRATION_WAIT_S``.
        hivemind answered BAD_GROUP_ID at once, and the member's round failed: the coordinator's
        averaging peer, which starts its round when the volunteers' reports show the epoch ended,
        is often a moment behind the volunteers that lead that count."""
        if await self._refused_parts(stream, context):  # before holding anything for the caller
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        request = await anext(stream)
        deadline = asyncio.get_event_loop().time() + GROUP_REGISTRATION_WAIT_S
        while request.group_id not in self._running_groups and asyncio.get_event_loop().time() < deadline:
            await asyncio.sleep(0.05)
        async for message in super().rpc_aggregate_part(achain(as_aiter(request), stream), context):
            yield message

    # training.aggregation: "robust" reduces with essaim.swarm.aggregation, "mean" as hivemind does
    aggregation: str = "mean"
    # robust: the peer ids allowed to reduce (the coordinator's averaging peers); None: any full peer
    reducers: frozenset[str] | None = None
    reducer_order: tuple[str, ...] = ()  # the same, in the job's order (the first averaging peer first)
    # robust, on the coordinator's averaging peer: keep the whole updates of a sample of each
    # round's senders for essaim.swarm.validation (the trainer's process checks them)
    validating: bool = False
    # whether this peer leads groups (False: a job's averaging peer other than the first)
    leads: bool = True

    async def _aggregate_with_group(self, group_info: Any, min_vector_size: int, **kwargs: Any) -> Any:
        """hivemind's, but a tagged round whose all-reduce failed is not tried again: hivemind
        looked for a new group until the round's deadline (``averaging_timeout``), but the
        group's other members have ended their round of that epoch (completed with what they
        received, or failed too), and rounds are tagged with their epoch, so no group could form.
        The retry only held the matchmaking of the next epochs' rounds (one at a time), which
        failed in turn: one lost round became several. The optimizer proceeds with the local
        update, as for any failed round."""
        try:
            return await self._reduce_with_group(group_info, min_vector_size, **kwargs)
        except BaseException:
            step = _ROUND.get()
            if step is not None and round_epoch(self.serializer, step.data_for_gather) is not None:
                step._allow_retries = False  # read by hivemind's _step loop in this process
            raise

    async def _reduce_with_group(self, group_info: Any, min_vector_size: int, **kwargs: Any) -> Any:
        """hivemind's, but under robust aggregation only ``reducers`` get a share of the vector to
        reduce (a volunteer that says it can reduce gets nothing of ours to poison: it then sends
        its parts cut to other boundaries, and the reducers refuse them), and what this peer made
        of its senders as a reducer goes back with the gathered data (this runs in hivemind's
        averager process; :class:`~essaim.swarm.aggregation.Gathered` crosses to the trainer's)."""
        if self.aggregation != "robust":
            return await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)
        self._verdicts: dict[bytes, dict[str, Any]] = getattr(self, "_verdicts", {})
        self._updates: dict[bytes, tuple[dict[str, torch.Tensor], int]] = getattr(self, "_updates", {})
        try:
            if self.reducers is None:
                gathered = await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)
            else:
                gathered = await self._aggregate_reduced_by_us(group_info, min_vector_size, **kwargs)
            updates, offset = self._updates.pop(group_info.group_id, ({}, 0))
            return Gathered(gathered, verdicts=self._verdicts.pop(group_info.group_id, {}), updates=updates,
                            offset=offset)
        finally:
            self._verdicts.pop(group_info.group_id, None)
            self._updates.pop(group_info.group_id, None)

    def _exclusions(self) -> dict[str, str]:
        """Peer id -> why it is refused for the rest of the job (kept in the averager's process)."""
        if not hasattr(self, "_excluded"):
            self._excluded: dict[str, str] = {}
        return self._excluded

    async def _note_checks(self, results: dict[str, tuple[bool, str]]) -> None:
        """What validation made of the updates this peer kept (sent over hivemind's pipe from the
        trainer's process; inconclusive checks are not sent): a failed check counts one up, a
        passed one one down (a lucky pass of an imitation does not wipe out its failures); a
        sender whose count is above 0 is checked in every round, and one whose count reaches
        ``FAILS_TO_DROP`` is refused for the rest of the job."""
        self._sampler: Sampler = getattr(self, "_sampler", None) or Sampler()
        self._failed_checks: dict[str, int] = getattr(self, "_failed_checks", {})
        excluded = self._exclusions()
        for peer, (passed, why) in results.items():
            failed = self._failed_checks.get(peer, 0)
            self._failed_checks[peer] = failed = max(0, failed - 1) if passed else failed + 1
            self._sampler.note(peer, failed == 0)
            if failed >= FAILS_TO_DROP and peer not in excluded:
                excluded[peer] = f"excluded for the rest of the job after failing validation: {why}"
                logger.warning("averaging: peer %s is dropped from the rounds: %s", peer, why)

    async def _note_exclusions(self, excluded: dict[str, str]) -> None:
        """Peers the job's coordinator dropped after failing validation (sent over hivemind's pipe:
        :meth:`SwarmOptimizer.exclude`): where a job has several averaging peers, each checks its
        own slice of the updates, and the failures are counted across all of them."""
        mine = self._exclusions()
        for peer, why in excluded.items():
            if peer not in mine:
                mine[peer] = why
                logger.warning("averaging: peer %s is dropped from the rounds: %s", peer, why)

    def _reducers_first(self, group_info: Any) -> Any:
        """``group_info`` with the job's averaging peers first, in the job's order of them, then the
        others as the leader ordered them (every member makes the same order from the same group).
        An all-reduce hands each reducer the slice at its place in that order: so each averaging
        peer reduces, and checks, about the same slice in every round, and a replay is compared
        with what the same peer saw of the update it repeats."""
        rank = {peer: i for i, peer in enumerate(self.reducer_order)}
        order = sorted(range(len(group_info.peer_ids)),
                       key=lambda i: (rank.get(str(group_info.peer_ids[i]), len(rank)), i))
        return GroupInfo(group_info.group_id, tuple(group_info.peer_ids[i] for i in order),
                         tuple(group_info.gathered[i] for i in order))

    async def _aggregate_reduced_by_us(self, group_info: Any, min_vector_size: int, **kwargs: Any) -> Any:
        group_info = self._reducers_first(group_info)
        try:
            bandwidths, mode_ids, user_gathered_bytes = zip(*map(self.serializer.loads, group_info.gathered), strict=True)
            user_gathered = dict(zip(group_info.peer_ids, map(self.serializer.loads, user_gathered_bytes), strict=True))
            modes = tuple(map(AveragingMode, mode_ids))
            download_bandwidths = [
                thr if mode != AveragingMode.CLIENT and str(peer) in self.reducers else 0.0  # type: ignore[operator]
                for thr, mode, peer in zip(bandwidths, modes, group_info.peer_ids, strict=True)
            ]
            if not any(b is None or b > 0 for b in download_bandwidths):  # None: "as the others"
                raise AllreduceException("no averaging peer of the coordinator in this group to reduce it")
            peer_fractions = await asyncio.get_event_loop().run_in_executor(
                None, load_balance_peers, self.total_size, download_bandwidths, min_vector_size
            )
            async with enter_asynchronously(self.get_tensors()) as local_tensors:
                await self._run_allreduce_inplace_(local_tensors, group_info, peer_fractions=peer_fractions, **kwargs)
                return user_gathered
        except BaseException as e:
            if isinstance(e, Exception):
                logger.debug("all-reduce failed: %r", e, exc_info=True)
            raise MatchmakingException(f"Unable to run All-Reduce: {e}") from e

    async def _run_allreduce_inplace_(self, tensors: Sequence[torch.Tensor], group_info: Any,
                                      group_id: bytes | None = None, **kwargs: Any) -> None:
        """hivemind's, with a :class:`RobustAllReduceRunner` under robust aggregation."""
        if self.aggregation != "robust":
            return await super()._run_allreduce_inplace_(tensors, group_info, group_id, **kwargs)
        group_id = group_info.group_id if group_id is None else group_id
        self._norm_history: NormHistory = getattr(self, "_norm_history", None) or NormHistory()
        self._exclusions()
        self._against: set[str] = getattr(self, "_against", set())  # far and against in their last round
        keep_whole: set[str] = set()
        if self.validating:
            self._sampler = getattr(self, "_sampler", None) or Sampler()
            own = str(self.peer_id)
            keep_whole = self._sampler.choose(  # the volunteers: the job's other averaging peers send nothing
                str(p) for p in group_info.peer_ids
                if str(p) != own and str(p) not in self._excluded and str(p) not in (self.reducers or ()))
        runner = RobustAllReduceRunner(
            p2p=self._p2p, servicer_type=type(self), prefix=self.prefix, tensors=tensors, group_id=group_id,
            ordered_peer_ids=group_info.peer_ids, history=self._norm_history, excluded=self._excluded,
            keep_whole=keep_whole, **kwargs,
        )
        assert group_id in self._running_groups, f"group {group_id!r} was not registered"
        self._running_groups[group_id].set_result(runner)
        try:
            async for tensor, update in azip(as_aiter(*tensors), runner):
                tensor.add_(update, alpha=self._averaging_alpha)
                self.last_updated = get_dht_time()
                self._state_updated.set()
            container = runner.tensor_part_container
            if container.failed_size:
                # hivemind keeps this member's own values for the parts a reducer never returned and
                # calls the round a success; the member then steps on a different update than the
                # others. Say it failed: the optimizer proceeds with the local update, as it says.
                raise AllreduceException(
                    f"the reducer returned {1 - container.failed_size / container.total_size:.0%} of the average")
        finally:
            verdicts = runner.verdicts()
            mark_repeats(verdicts, self._against)
            self._verdicts[group_info.group_id] = {peer: v.as_dict() for peer, v in verdicts.items()}
            if keep_whole:
                self._updates[group_info.group_id] = (runner.whole_updates(), runner.own_offset)
            for peer, why in suspects(verdicts).items():
                logger.warning("averaging: peer %s is suspect: %s", peer, why)
                if not why.startswith("refused: excluded"):
                    self._excluded[peer] = f"excluded for the rest of the job after {why}"

    @torch.no_grad()
    def accumulate_grads_(self, batch_size: int) -> None:
        if batch_size == 0:  # the coordinator's averaging peer: nothing to add (hivemind divides by it)
            return
        super().accumulate_grads_(batch_size)

    min_weight = 0.0  # the coordinator's averaging peer: AVERAGING_PEER_WEIGHT

    def step(self, weight: float | None = None, **kwargs: Any) -> Any:
        """hivemind weighs a peer by its samples. The coordinator's averaging peer has none, and a
        group where every other member also weighs 0 (a peer that just reloaded the state tags
        along with weight 0) would divide by 0 and hand everyone NaN; it weighs a token
        ``min_weight`` instead (its update is 0, so the average only shrinks by min_weight/samples)."""
        if weight is None and self.min_weight:
            weight = max(float(self.local_samples_accumulated), self.min_weight)
        return super().step(weight=weight, **kwargs)


def round_epoch(serializer: Any, data_for_gather: bytes) -> int | None:
    """The epoch a gradient round closes, from a member's gathered data (None: untagged or unreadable)."""
    try:
        _bandwidth, _mode, user = serializer.loads(data_for_gather)
        tag = serializer.loads(user)
        return int(tag[ROUND_EPOCH]) if isinstance(tag, dict) and ROUND_EPOCH in tag else None
    except Exception:
        return None


class PseudoGradientAverager(_GradAverager):
    """DiLoCo's averager: ``parameters`` are the anchors; the "gradient" it averages is
    ``anchor - local`` for the model's trainable ``local_parameters``, weighted by samples.

    With ``hold_boundary`` (overlapped averaging) the local parameters go on changing while the
    round runs: the first load of an epoch keeps a copy of them (:attr:`boundary`), and every load
    until the outer step has been applied (hivemind reloads when a round fails) uses that copy.
    """

    def __init__(
        self, parameters: Sequence[torch.nn.Parameter], *, local_parameters: Sequence[torch.Tensor],
        hold_boundary: bool = False, **kwargs: Any,
    ) -> None:
        self.local_parameters = tuple(local_parameters)
        self.hold_boundary = hold_boundary
        self.boundary: tuple[torch.Tensor, ...] | None = None
        kwargs["reuse_grad_buffers"] = True  # no accumulators: nothing is accumulated
        super().__init__(parameters, **kwargs)

    def take_boundary(self) -> tuple[torch.Tensor, ...] | None:
        """The local parameters at the end of the epoch whose outer step is being applied (once)."""
        boundary, self.boundary = self.boundary, None
        return boundary

    @torch.no_grad()
    def accumulate_grads_(self, batch_size: int) -> None:
        self.local_samples_accumulated += batch_size
        self.local_times_accumulated += 1

    @torch.no_grad()
    def load_accumulators_into_averager_(self) -> None:
        local_parameters: Sequence[torch.Tensor] = self.local_parameters
        if self.hold_boundary:
            if self.boundary is None:
                self.boundary = tuple(
                    p.detach().to(device="cpu", dtype=torch.float32, copy=True) for p in self.local_parameters
                )
            local_parameters = self.boundary
        with self.get_tensors() as averaged:
            for out, anchor, local in zip(averaged, self.parameters, local_parameters, strict=True):
                out.copy_(anchor.detach()).sub_(local.detach().to(device="cpu", dtype=torch.float32))

    @torch.no_grad()
    def reset_accumulated_grads_(self) -> None:
        self._accumulators_used_in_step = False
        self.local_samples_accumulated = self.local_times_accumulated = 0
        self._anchor_batch_size = None


class _ThrottledEvent(threading.Event):
    """A threading.Event whose ``set`` takes effect at most once per ``interval`` seconds; a call
    inside the interval is applied at its end, so the last one of a burst is never lost."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._last = -math.inf
        self._timer: threading.Timer | None = None
        self._guard = threading.Lock()

    def set(self) -> None:
        with self._guard:
            wait = self._last + self.interval - time.monotonic()
            if wait <= 0:
                self._last = time.monotonic()
                super().set()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._deferred)
                self._timer.daemon = True
                self._timer.start()

    def _deferred(self) -> None:
        with self._guard:
            self._timer = None
            self._last = time.monotonic()
        super().set()


class _Tracker(ProgressTracker):
    """hivemind's ProgressTracker, except that a peer that sees no other peer ends its epoch only
    when it has the target batch itself *and* a look at the swarm taken after that still shows no
    one. hivemind would also end it at an estimated time, which before the first throughput
    measurement is "now": peers that start together each stepped alone and drifted apart.

    It also publishes its progress at most every ``REPORT_EVERY_S`` seconds: hivemind signs and
    stores a record after every micro-batch, which cost a small model ~10% of its samples/s
    (bench/overhead.py)."""

    _last_fetch = -math.inf
    _target_reached_at: float | None = None
    def __init__(self, *args: Any, always_report: bool = False, **kwargs: Any) -> None:
        self.always_report = always_report  # before hivemind starts the reporting thread
        super().__init__(*args, **kwargs)

    async def _progress_reporter(self) -> None:
        """hivemind publishes a peer's progress only while it gathers samples ("do not report aux
        peers"). The coordinator's averaging peer gathers none, yet it must be seen: it is the one
        full peer of a swarm of NAT-ed volunteers, and client-mode peers take the swarm's epoch
        from full peers only. So it reports every ``REPORT_EVERY_S`` seconds, with no samples."""
        if not self.always_report:
            return await super()._progress_reporter()
        loop = asyncio.get_event_loop()
        store_task = None
        try:
            while not self.shutdown_triggered.is_set():
                await loop.run_in_executor(None, self.should_report_progress.wait, 2 * REPORT_EVERY_S)
                self.should_report_progress.clear()
                now = get_dht_time()
                progress = self._get_local_progress(self.local_progress.epoch, 0)
                store_task = asyncio.create_task(asyncio.wait_for(
                    self.dht.store(key=self.training_progress_key, subkey=self._local_public_key,
                                   value=progress.dict(), expiration_time=now + self.metadata_expiration,
                                   return_future=True),
                    timeout=self.metadata_expiration,
                ))
        finally:
            if store_task is not None:
                store_task.cancel()

    @property
    def should_report_progress(self) -> threading.Event:
        return self._report_event

    @should_report_progress.setter
    def should_report_progress(self, _event: threading.Event) -> None:  # set once by hivemind's __init__
        self._report_event = _ThrottledEvent(REPORT_EVERY_S)

    max_peer_epoch = 0  # the highest epoch any peer reports, client-mode ones included
    newest_report = -math.inf  # when another peer last reported progress (DHT time)
    full_peer_epoch = -1  # the highest epoch another peer that can lead this one's groups reports
    # the peer ids that lead groups (robust aggregation: the coordinator's averaging peers, the
    # only ones a volunteer's rounds follow); None: any full peer
    leaders: frozenset[str] | None = None

    leaders_epoch = -1  # the highest epoch the leaders reported, last seen

    def _parse_swarm_progress_data(self, metadata: Any) -> Any:
        clients = None
        leading = None  # the leaders' own records, when the leaders are known (robust aggregation)
        if self.leaders is not None and isinstance(metadata, dict):
            leading = [r for owner, r in self._records_by_owner(metadata) if owner in self.leaders]
            if self.always_report:
                clients = sum(1 for v in metadata.values()
                              if isinstance(getattr(v, "value", None), dict) and v.value.get("client_mode"))
                metadata = self._followers_marked(metadata, leading)
            else:
                metadata = self._ahead_dropped(metadata, leading)
        progress = super()._parse_swarm_progress_data(metadata)
        if clients is not None:
            progress.num_clients = clients  # the NAT-ed ones, not the volunteers marked as following
        self._last_fetch = get_dht_time()
        if isinstance(metadata, dict):
            mine = self.local_progress.peer_id
            records = [v.value for v in metadata.values() if isinstance(getattr(v, "value", None), dict)]
            others = [r for r in records if r.get("peer_id") != mine]
            self.max_peer_epoch = max([int(r.get("epoch", 0)) for r in records] + [progress.epoch])
            self.newest_report = max([float(r.get("time", -math.inf)) for r in others], default=-math.inf)
            if leading is None:  # any full peer may lead
                leading = [r for r in others if not r.get("client_mode")]
            self.full_peer_epoch = max([int(r.get("epoch", 0)) for r in leading if r.get("peer_id") != mine],
                                       default=-1)
            if self.always_report:
                self._count_client_epochs(progress, others)
        return progress

    def _followers_marked(self, metadata: dict[Any, Any], leading: list[dict[str, Any]]) -> dict[Any, Any]:
        """``metadata`` with every record but the leaders' own (``leading``) marked as a client-mode peer's: what
        the coordinator's averaging peer reads the swarm's epoch from.

        hivemind takes the swarm's epoch as the highest any full peer reports. Where the averaging
        peers lead every round (robust aggregation), a full-mode volunteer (a public host, a port
        forward or mapping) then set the averaging peer's epoch alone: it led the round the moment
        that one volunteer began it, before the NAT-ed volunteers' own view of the swarm said the
        epoch had ended, and closed it without them (in the NAT lab, with a volunteer behind a UPnP
        router as a full peer, it averaged the round of epoch 2 with that one alone in both runs,
        and that of epoch 4 too in one); and one volunteer reporting a forged epoch dragged it
        along. Marked so, every volunteer counts as a NAT-ed one does: the averaging peer follows
        the volunteers' median epoch (:meth:`_count_client_epochs`) and counts every volunteer's
        samples. Volunteers keep hivemind's rule: one that sees another begin the round begins its
        own at once, which a volunteer that has just joined needs to be in time."""
        theirs = {id(record) for record in leading}
        marked = {}
        for subkey, item in metadata.items():
            record = getattr(item, "value", None)
            if isinstance(record, dict) and id(record) not in theirs and not record.get("client_mode"):
                item = ValueWithExpiration({**record, "client_mode": True},
                                           getattr(item, "expiration_time", math.inf))
            marked[subkey] = item
        return marked

    def _ahead_dropped(self, metadata: dict[Any, Any], leading: list[dict[str, Any]]) -> dict[Any, Any]:
        """``metadata`` less the records of other peers that claim an epoch more than one past the
        leaders' (the coordinator's averaging peers; ``leading``, their records in it): what a
        volunteer reads the swarm's epoch from.

        A volunteer keeps hivemind's rule, the highest epoch a full peer reports, so that it begins
        a round the moment another one does (:meth:`_followers_marked`). One full-mode volunteer
        reporting a forged epoch then moved every other one: each reloaded the averaging peer's
        state at every step (it was "out of sync"), then took up the forged epoch at its next round
        and left the job as completed; the averaging peer, following their median, completed the
        job too (a 12-epoch job ended after 4 rounds, each honest volunteer having reloaded the state
        350 times). The leaders take part in every round, so no honest volunteer is more than the
        one epoch ahead of them that beginning a round puts it. A volunteer that has not seen the
        leaders yet believes every record, as hivemind does."""
        if leading:  # a restarted averaging peer may come back behind
            self.leaders_epoch = max(int(r.get("epoch", 0)) for r in leading)
        if self.leaders_epoch < 0:
            return metadata
        ceiling = self.leaders_epoch + 1
        mine = self.local_progress.peer_id
        kept = {}
        for subkey, item in metadata.items():
            record = getattr(item, "value", None)
            if (isinstance(record, dict) and record.get("peer_id") != mine
                    and int(record.get("epoch", 0)) > ceiling):
                continue
            kept[subkey] = item
        if len(kept) < len(metadata) and time.monotonic() - self._last_ahead_warning > AHEAD_WARNING_EVERY_S:
            self._last_ahead_warning = time.monotonic()
            logger.warning("ignored %d progress record(s) claiming an epoch past %d: the job's averaging peers "
                           "are at epoch %d, and no peer can be further on than the round they lead",
                           len(metadata) - len(kept), ceiling, self.leaders_epoch)
        return kept

    _last_ahead_warning = -math.inf

    @staticmethod
    def _records_by_owner(metadata: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(peer id of the key that signed it, record) for each record whose claimed peer id is that
        of its signer: a record's ``peer_id`` is the peer's word, its subkey the key that signed it."""
        found = []
        for subkey, item in metadata.items():
            record = getattr(item, "value", None)
            owner = owner_peer_id(subkey) if isinstance(subkey, bytes) else None
            if not isinstance(record, dict) or owner is None:
                continue
            try:
                claimed = PeerID(record.get("peer_id", b"")).to_base58()
            except Exception:
                continue
            if claimed == owner:
                found.append((owner, record))
        return found

    def _count_client_epochs(self, progress: Any, others: list[dict[str, Any]]) -> None:
        """hivemind takes the swarm's epoch from full peers only; in a swarm of NAT-ed volunteers
        the coordinator's averaging peer is the only one, so it would never see the volunteers move
        on without it (after a round it missed, it would wait forever). It takes their median epoch
        instead: the epoch most of them are at, which no single volunteer of three or more can
        drag it past. With the leaders known (robust aggregation) every volunteer counts here,
        full-mode ones too (:meth:`_followers_marked`).

        The upper median moves it at most one epoch on (in a pair, one volunteer beginning the
        round begins it here too); further only the lower one, an epoch at least half of them
        reached (a restarted averaging peer, behind them all). One of a pair claiming a forged
        epoch moved it there, and the job was done."""
        epochs = sorted(int(r.get("epoch", 0)) for r in others if r.get("client_mode"))
        if not epochs:
            return
        upper, lower = epochs[len(epochs) // 2], epochs[(len(epochs) - 1) // 2]
        median = max(min(upper, self.local_progress.epoch + 1), lower)
        if median > progress.epoch:
            progress.epoch = median
            progress.samples_accumulated = sum(int(r.get("samples_accumulated", 0)) for r in others
                                               if int(r.get("epoch", -1)) == median)

    @property
    def ready_to_update_epoch(self) -> bool:
        if self.always_report:
            # the coordinator's averaging peer ends an epoch only with the volunteers: when their
            # samples reach the target or they moved on (the median epoch, _count_client_epochs),
            # never on hivemind's estimate, which has it step alone, epoch after epoch, on the
            # records of volunteers that just left
            return (self.global_epoch > self.local_progress.epoch
                    or self.global_progress.samples_accumulated >= self.target_batch_size)
        alone = self.global_progress.num_peers <= 1 and self.global_epoch <= self.local_progress.epoch
        if not alone:
            return super().ready_to_update_epoch
        if self.local_progress.samples_accumulated < self.target_batch_size:
            self._target_reached_at = None
            return False
        if self._target_reached_at is None:
            self._target_reached_at = get_dht_time()
        return self._last_fetch > self._target_reached_at


def ranked_above(announced: Any, me: PeerID) -> list[PeerID]:
    """The peers of hivemind's state announcement (peer -> priority, the epoch) ranked above ``me``
    (a higher priority, or the same and a higher peer id), best first; all of them when ``me``
    offers no state."""
    priority = {PeerID(peer): (float(item.value), PeerID(peer).to_bytes())
                for peer, item in (announced.items() if isinstance(announced, dict) else ())
                if isinstance(getattr(item, "value", None), (float, int))}
    ranked = sorted(priority, key=priority.__getitem__, reverse=True)
    return ranked[: ranked.index(me)] if me in ranked else ranked


class _StateAverager(AdmittedServicer, TrainingStateAverager):
    """hivemind's TrainingStateAverager that tells its owner before the host copy of the parameters
    (the outer step's result, an averaged or a downloaded state) is copied into the main ones, and
    that never offers a state under an epoch it has not reached: while an epoch's delayed optimizer
    step has not run, the epoch is counted but the parameters are still the previous epoch's, so
    they are offered (to newcomers and the keeper) as that epoch's."""

    before_apply: Callable[[], None] | None = None
    step_pending = False  # an epoch's delayed optimizer step was submitted and has not run yet

    def __init__(self, *args: Any, admission: Admission | None = None,
                 state_sources: Sequence[str] | None = None, **kwargs: Any) -> None:
        self.admission = admission  # both before hivemind starts the averager's process
        self.state_sources = tuple(state_sources) if state_sources is not None else None
        super().__init__(*args, **kwargs)

    # Where a state is loaded from. hivemind downloads from whichever peer announces the highest
    # priority (its epoch) in the DHT: any swarm member could announce a forged "final" state and
    # hand it to every newcomer and to the keeper. With ``state_sources`` (robust aggregation: the
    # coordinator's averaging peers) only those are asked, directly, in their order. From any
    # source, a state with a non-finite value is refused.
    _loading = False
    loaded = False  # whether the last load_state_from_peers replaced the state

    loaded_epoch: int | None = None  # the epoch of the state the last load replaced this one with

    def load_state_from_peers(self, **kwargs: Any) -> Any:
        self._loading, self.loaded, self.loaded_epoch = True, False, None
        try:
            return super().load_state_from_peers(**kwargs)
        finally:
            self._loading = False
            if self.loaded:
                self.loaded_epoch = self.local_epoch

    async def _load_state_from_peers(self, future: Any, timeout: float | None = None) -> None:
        if timeout is not None:  # as hivemind: the timeout applies to each chunk
            timeout = self.next_chunk_timeout if self.next_chunk_timeout is not None else self.request_timeout
        try:
            for peer in await self._state_sources():
                if peer == self.peer_id:
                    continue
                started = time.monotonic()
                try:
                    state = await self._download_state(peer, timeout)
                except Exception as exc:
                    logger.warning("could not download the state from %s: %r", peer, exc)
                    continue
                if state is None:
                    logger.debug("%s sent no state", peer)
                    continue
                metadata, tensors = state
                if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
                    logger.warning("refused the state %s sent: it holds non-finite values", peer)
                    continue
                logger.info("downloaded the state of epoch %s from %s in %.1f s", metadata.get("epoch"), peer,
                            time.monotonic() - started)
                future.set_result(state)
                return
            logger.info("no peer sent its state%s", " (only the job's averaging peers are asked)"
                        if self.state_sources is not None else "")
        finally:
            if not future.done():
                future.set_result(None)

    async def _state_sources(self) -> list[PeerID]:
        """The peers to ask for a state, best first. Without ``state_sources`` (mean aggregation):
        those announcing a higher priority (epoch) than this peer, or the same with a higher peer
        id. A peer ranks no peer below itself: two peers whose round failed, each reloading from
        the other at once, would only swap states; this way the lower loads the higher's, and a
        newcomer (epoch 0) still loads from the peers ahead of it."""
        if self.state_sources is not None:
            return [PeerID.from_base58(p) for p in self.state_sources]
        found = await self.dht.get(self.announce_key, latest=True, return_future=True)
        return ranked_above(getattr(found, "value", None), self.peer_id)

    @property
    def announce_key(self) -> str:
        """Where hivemind's state averagers announce the state they offer (priority: the epoch)."""
        return f"{self._matchmaking.group_key_manager.prefix}.all_averagers"

    def has_source(self) -> bool:
        """Whether any peer could send this one a state (from the trainer's process)."""
        if self.state_sources is not None:
            return bool(self.state_sources)
        found = self.dht.get(f"{self.prefix}.all_averagers", latest=True)
        return bool(ranked_above(getattr(found, "value", None), self.dht.peer_id))

    async def _download_state(self, peer: PeerID, timeout: float | None) -> tuple[dict[str, Any], list[torch.Tensor]] | None:
        stub = self.get_stub(self._p2p, peer, namespace=self.prefix)
        stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
        metadata: Any = None
        parts: list[Any] = []
        tensors: list[torch.Tensor] = []
        async for message in aiter_with_timeout(stream, timeout=timeout):
            if message.metadata:
                metadata = self.serializer.loads(message.metadata)
            if message.tensor_part.dtype and parts:  # the first part of the next tensor
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                parts = []
            parts.append(message.tensor_part)
        if parts:
            tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
        return (metadata, tensors) if isinstance(metadata, dict) else None

    def step(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("optimizer_step") and kwargs.get("delay_optimizer_step"):
            self.step_pending = True
        return super().step(*args, **kwargs)

    def _update_scheduler(self) -> None:  # after each optimizer step, and at the end of a state's load
        super()._update_scheduler()
        self.step_pending = False
        if self._loading:
            self.loaded = True

    def _apply_optimizer_parameters_(self) -> None:
        if self.before_apply is not None:
            self.before_apply()
        super()._apply_optimizer_parameters_()
        self.step_pending = False  # whatever ran (or failed), the parameters are now the ones offered

    def get_current_state(self) -> Any:
        # a state asked for while an epoch's step is pending would be the previous epoch's: give
        # the step a moment to land (this runs on hivemind's state-serving thread)
        deadline = time.monotonic() + PENDING_STEP_WAIT_S
        while self.step_pending and time.monotonic() < deadline:
            time.sleep(0.05)
        with self.lock_optimizer:  # not halfway through a background optimizer step
            metadata, tensors, infos = super().get_current_state()
            if self.step_pending:
                metadata = {**metadata, "epoch": metadata["epoch"] - 1}
        return metadata, tensors, infos


class _HivemindOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer that tells its owner when it replaced its state with a peer's, and that
    does not arrange averaging rounds ahead of time while it is alone in the swarm (hivemind would
    start a matchmaking every epoch that can only time out, keeping a lone peer's CPU busy) or
    while its last round still runs."""

    on_state_loaded: Callable[[], None] | None = None
    rounds: deque[RoundOutcome]  # the last ROUNDS_KEPT gradient rounds, newest last
    _round_epochs: dict[int, int]

    def _note_round(self, outcome: RoundOutcome, members: tuple[str, ...] | None = None) -> None:
        """Keep ``outcome``; ``members``: the whole group where ``outcome.peers`` is only the part of
        it this peer reduced (a job's averaging peer that is not its first: the first one sends it
        nothing, yet it applied that one's update too)."""
        if not hasattr(self, "rounds"):
            self.rounds = deque(maxlen=ROUNDS_KEPT)
        self.rounds.append(outcome)
        self.rounds_noted = getattr(self, "rounds_noted", 0) + 1
        group = set(outcome.peers if members is None else members)
        if self.state_sources and not (outcome.averaged and group & set(self.state_sources)):
            self.drifted = True  # it applied an update the averaging peers did not: see SwarmOptimizer.step
        elif self.state_sources is None and not outcome.averaged and outcome.error != ALONE and not self.auxiliary:
            self.drifted = True  # it applied an update the others did not (mean aggregation)
        if outcome.averaged:
            logger.info("epoch %d: averaged with %d peer(s)", outcome.epoch, len(outcome.peers) - 1)
        else:
            logger.info("epoch %d: averaged with nobody: %s", outcome.epoch, outcome.error)

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control: Any) -> None:
        """hivemind's, then the round's outcome is noted (hivemind only logs it), even when
        loading the average failed."""
        epoch = getattr(self, "_round_epochs", {}).pop(id(maybe_step_control), self.local_epoch - 1)
        left_behind = maybe_step_control is not None and self._give_up_if_left_behind(maybe_step_control, epoch)
        try:
            super()._average_gradients_and_load_into_optimizer(maybe_step_control)
        except BaseException as exc:
            self._note_round(RoundOutcome(epoch=epoch, error=describe_failure(exc)))
            raise
        if maybe_step_control is None:
            self._note_round(RoundOutcome(epoch=epoch, error=ALONE))
            return
        error = ""
        peers: tuple[str, ...] = ()
        members: tuple[str, ...] | None = None
        verdicts: dict[str, dict[str, Any]] = {}
        if left_behind:
            error = (f"late: the swarm closed epoch {epoch}'s round before this peer found its group, "
                     f"so this peer's samples of epoch {epoch} were not averaged")
        elif not maybe_step_control.done():
            error = describe_failure(None)
        elif maybe_step_control.cancelled():
            error = describe_failure(RuntimeError("cancelled"))
        elif maybe_step_control.exception() is not None:
            error = describe_failure(maybe_step_control.exception())
        else:
            gathered = maybe_step_control.result()
            peers = members = tuple(str(p) for p in gathered) if isinstance(gathered, dict) else ()
            verdicts = getattr(gathered, "verdicts", {})
            if verdicts:  # this peer reduced the round: its peers are those whose parts it received
                peers = tuple(p for p in peers if p in verdicts or p == str(self.dht.peer_id))
            checks = self._check_updates(getattr(gathered, "updates", {}), offset=getattr(gathered, "offset", 0))
            for peer, check in checks.items():
                verdicts.setdefault(peer, {})["check"] = check.as_dict()
        self._note_round(RoundOutcome(epoch=epoch, peers=peers, error=error, verdicts=verdicts), members)

    validator: Validator | None = None  # the coordinator's averaging peer, under robust aggregation

    def _check_updates(self, updates: dict[str, torch.Tensor], *, offset: int = 0) -> dict[str, Check]:
        """Validate the updates the reducer kept (before the outer step: the state is still the
        round's anchor), each the slice of the averaged vector from ``offset`` that this peer
        reduced, and tell the averager what came of it."""
        if not updates or self.validator is None:
            return {}
        averager = self.state_averager
        if self.offload_optimizer:  # the outer step's result, before the main parameters take it up
            base = [p for group in averager.optimizer.param_groups for p in group["params"]]
        else:
            base = list(averager.main_parameters)
        try:
            checks = self.validator.check(updates, offset=offset, base=base)
        except Exception as exc:  # a check that cannot run judges nobody
            logger.warning("validation of %d update(s) failed to run: %r", len(updates), exc)
            return {}
        for peer, check in checks.items():
            if not check.passed and not check.inconclusive:
                logger.warning("validation: peer %s failed: %s", peer, check.why)
        decided = {p: (c.passed, c.why) for p, c in checks.items() if not c.inconclusive}
        if decided:
            self.grad_averager._outer_pipe.send(("_note_checks", [], {"results": decided}))
        return checks

    def _give_up_if_left_behind(self, control: Any, epoch: int) -> bool:
        """Wait while ``control`` (the round closing ``epoch``) looks for its group (at most
        ``averaging_timeout``), and cancel it when this peer, in client mode, can no longer find
        one: it still looks ``LATE_MATCHMAKING`` matchmaking periods after this peer saw the
        swarm's full peers move past ``epoch`` (a full peer moves on when it begins the round, and
        holds its group open for at most a matchmaking period). A client-mode peer can only join a
        full peer's group, and theirs for ``epoch`` is closed (rounds are tagged with their epoch).
        Waiting out the round's timeout would hold the next round's matchmaking (hivemind looks for
        one group at a time) and, in overlapped mode, this peer's training at the next epoch's end,
        and with it the progress reports the coordinator's averaging peer ends epochs on. Returns
        True when cancelled."""
        if not (self.client_mode or getattr(self.grad_averager, "follows_only", False)):
            return False
        give_up_at = time.monotonic() + self.averaging_timeout
        moved_on_at: float | None = None
        while not control.done() and control.stage == AveragingStage.LOOKING_FOR_GROUP:
            if getattr(self.tracker, "full_peer_epoch", -1) > epoch:  # it began the round: its group is open a while
                moved_on_at = time.monotonic() if moved_on_at is None else moved_on_at
                if time.monotonic() - moved_on_at > LATE_MATCHMAKING * self.matchmaking_time:
                    control.cancel()
                    return True
            if time.monotonic() > give_up_at:
                return False
            time.sleep(0.1)
        return False

    # set on the class of a build: hivemind makes its averagers in __init__
    admission: Admission | None = None
    state_sources: tuple[str, ...] | None = None  # _StateAverager.state_sources
    drifted = False  # a round of this peer did not reach the state sources: its state is its own

    def _make_state_averager(self, **kwargs: Any) -> TrainingStateAverager:
        return _StateAverager(  # hivemind.Optimizer._make_state_averager, with the subclass
            admission=self.admission,
            state_sources=self.state_sources,
            dht=self.dht,
            prefix=f"{self.run_id}_state_averager",
            min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout,
            shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer,
            custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel,
            next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode,
            auxiliary=self.auxiliary,
            start=True,
            **kwargs,
        )

    def _make_progress_tracker(self, target_batch_size: int, **kwargs: Any) -> ProgressTracker:
        return _Tracker(dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size,
                        client_mode=self.client_mode, status_loglevel=self.status_loglevel, start=True, **kwargs)

    def _alone(self) -> bool:
        return self.tracker.global_progress.num_peers < 2

    def _maybe_schedule_gradient_averaging(self) -> None:
        # the next round's group may be arranged while the last round still runs (overlapped mode):
        # rounds are tagged with their epoch (_GradAverager.schedule_step), so no peer still on
        # the last round can join it
        if self._alone():
            return
        # In overlapped mode the coordinator's averaging peer arranges no round ahead: it leads the
        # round of an epoch from the moment the volunteers' reports show that epoch ended, and holds
        # its group open for a matchmaking period. Arranged on its estimate of the epoch's end, its
        # group closed before volunteers whose own estimate came later could join, and they lost
        # the round, often epoch after epoch. Overlapping volunteers go on training and reporting
        # while they wait for it; in sync mode they stop at their own estimate and report nothing
        # more, so there it arranges its rounds ahead, as they do.
        leads_late = (getattr(self.tracker, "always_report", False) and self.delay_grad_averaging
                      and getattr(self.grad_averager, "aggregation", "mean") == "robust")
        if not leads_late:
            super()._maybe_schedule_gradient_averaging()

    def _maybe_schedule_state_averaging(self) -> None:
        if self.state_sources is None and not self._alone():  # with state sources there is none
            super()._maybe_schedule_state_averaging()

    def _begin_averaging_gradients(self, grad_scaler: Any) -> bool:
        epoch = self.local_epoch  # the epoch this round closes (the counter moves on before it ends)
        scheduled: Any = getattr(self, "scheduled_grads", None)
        if scheduled is not None and scheduled.done():
            # the last epoch's round, finished (overlapped mode waits for it just before this): not
            # a group arranged for this epoch. hivemind would drop it *and* skip this epoch's round
            self.scheduled_grads = None
        began = super()._begin_averaging_gradients(grad_scaler)
        if began:
            if not hasattr(self, "_round_epochs"):
                self._round_epochs = {}
            self._round_epochs[id(self.scheduled_grads)] = epoch
        elif self.tracker.global_epoch > epoch + 1:
            self._note_round(RoundOutcome(epoch=epoch, error=(
                f"late: the swarm had moved on to epoch {self.tracker.global_epoch}, so this peer's samples of "
                f"epoch {epoch} were not averaged")))
        else:
            alone = self.tracker.global_progress.num_peers < 2
            self._note_round(RoundOutcome(epoch=epoch, error=ALONE if alone else "the round could not start"))
        if not began and not self.offload_optimizer:
            # without a round hivemind only refreshes the averager's buffers, which are the
            # optimizer's gradients when it is offloaded; here they must be copied into .grad
            self._load_local_gradients_into_optimizer()
        return began

    def load_state_from_peers(self, **kwargs: Any) -> None:
        """hivemind's, but a state a step behind the swarm is loaded again rather than "caught up
        with" (hivemind then only moves the epoch on: the anchors lack that step's update for
        good, since peers of a public swarm average no state that would mend it; a newcomer that
        joined so sent every round an update off by that step). The averaging peers offer a state
        under the epoch they hold (a pending step's state as the epoch before), and apply the step
        within a moment."""
        for attempt in range(STALE_STATE_RETRIES + 1):
            super().load_state_from_peers(**kwargs)
            if not self.state_sources:  # mean aggregation (any peer's state), or the averaging peer itself
                break
            loaded = getattr(self.state_averager, "loaded_epoch", None)
            swarm = getattr(self.tracker, "global_epoch", 0)
            if loaded is not None and loaded >= self.local_epoch:
                break  # the averaging peer's state, at the swarm's epoch
            if loaded is None and self.local_epoch > 0:
                break  # nothing loaded by a peer under way (the averaging peer may be down): train on
            if attempt == STALE_STATE_RETRIES:
                logger.warning("the state loaded (epoch %s) is still behind the swarm's epoch %d: this peer's "
                               "updates may be off until it loads again", loaded, max(self.local_epoch, swarm))
                break
            if loaded is None:  # a download cut short, or refused: the averaging peers hold the job's state
                logger.info("no state came from the averaging peers (the swarm is at epoch %d): asking again", swarm)
            else:
                logger.info("the state loaded (epoch %d) is a step behind the swarm (epoch %d): loading it again",
                            loaded, self.local_epoch)
                self.state_averager.local_epoch = loaded  # as loaded: a peer never refuses a state of its own epoch
            time.sleep(STALE_STATE_WAIT_S)
        self._move_on_unloaded()
        if self.on_state_loaded is not None:
            self.on_state_loaded()

    def _move_on_unloaded(self) -> None:
        """A peer under way two or more epochs behind the swarm reloads at every step (hivemind);
        when no peer sends a state (the averaging peers are down, or every peer ranked above it)
        that is a tight loop in which it never trains again. It takes up the swarm's epoch with its
        own state instead, as drifted: it loads the state sources' again once they answer."""
        swarm = int(getattr(self.tracker, "global_epoch", 0))
        if getattr(self.state_averager, "loaded", True) or self.local_epoch == 0 or self.local_epoch >= swarm - 1:
            return
        logger.warning("no peer sent a state while this peer is at epoch %d and the swarm at %d: it moves on to "
                       "epoch %d with its own state, and loads the swarm's once a peer holding it answers",
                       self.local_epoch, swarm, swarm)
        self.state_averager.local_epoch = swarm
        self.tracker.report_local_progress(local_epoch=swarm, samples_accumulated=0)
        if not self.client_mode:
            self.state_averager.state_sharing_priority = swarm
        self.drifted = True


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one :meth:`SwarmOptimizer.step` did: ``accepted`` is False when the batch was thrown
    away because the peer was out of sync and loaded the swarm's state instead."""

    new_epoch: bool
    accepted: bool
    epoch: int


class SwarmOptimizer:
    """One peer's optimizer for one job (both modes behind one interface). Build with :func:`build_optimizer`."""

    def __init__(
        self,
        *,
        settings: OptimizerSettings,
        named_params: list[tuple[str, torch.nn.Parameter]],
        hv: _HivemindOptimizer,
        lr_at: Callable[[int], float],
        anchors: tuple[torch.Tensor, ...] = (),
        inner: torch.optim.Optimizer | None = None,
        overlap: bool = False,
    ) -> None:
        self.settings = settings
        self.names = [name for name, _ in named_params]
        self.params = [p for _, p in named_params]
        self.hv = hv
        self.anchors = anchors
        self.inner = inner
        self.overlap = overlap
        self._lr_at = lr_at
        self._base_lrs = [g["lr"] for g in inner.param_groups] if inner is not None else []
        self._epoch_seen = hv.local_epoch
        self._synced_epoch = hv.local_epoch  # when this peer last held the averaging peers' state
        self._reloaded = False
        self._quiet: Any = None
        hv.on_state_loaded = self._after_state_loaded
        if overlap:
            hv.state_averager.before_apply = self._before_anchor_update
        self._set_inner_lr()

    # ---- what the training loop uses ----
    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def local_epoch(self) -> int:
        return int(self.hv.local_epoch)

    @property
    def global_epoch(self) -> int:
        return int(self.hv.tracker.global_epoch)

    @property
    def num_peers(self) -> int:
        """Peers that reported progress to the swarm lately (this one included once it trained)."""
        return int(self.hv.tracker.global_progress.num_peers)

    @property
    def last_round(self) -> RoundOutcome | None:
        """The newest gradient round's outcome (who this peer averaged with, or why not)."""
        rounds = getattr(self.hv, "rounds", None)
        return rounds[-1] if rounds else None

    def describe_swarm(self) -> str:
        """One line on what this peer sees of the swarm (for the averaging peer's logs)."""
        tracker = self.hv.tracker
        progress = tracker.global_progress
        age = get_dht_time() - tracker.newest_report
        return (f"epoch {self.local_epoch}, swarm epoch {progress.epoch} (highest reported {self.swarm_epoch}), "
                f"{progress.samples_accumulated}/{self.settings.target_batch_size} samples from "
                f"{progress.num_peers} peer(s) ({progress.num_clients} NAT-ed), last report {age:.1f} s ago")

    @property
    def swarm_epoch(self) -> int:
        """The highest epoch a peer of the swarm reports, NAT-ed (client-mode) volunteers included
        (hivemind's own global epoch counts only peers that accept connections)."""
        return max(int(getattr(self.hv.tracker, "max_peer_epoch", 0)), self.global_epoch)

    @torch.no_grad()
    def take_up_epoch(self, epoch: int) -> None:
        """The coordinator's averaging peer, behind a swarm that no peer can send the state of
        (NAT-ed volunteers serve none): go on from ``epoch`` with the state it holds, so that it is
        in the next round again. State averaging (``average_state_every``) then brings the peers'
        states together."""
        if epoch <= self.local_epoch:
            return
        hv = self.hv
        with hv.tracker.pause_updates():
            hv.state_averager.local_epoch = epoch
            hv.tracker.update_epoch(new_epoch=epoch)
        hv.state_averager.state_sharing_priority = float(epoch)
        if hv.grad_averager is not None:
            hv.grad_averager.reset_accumulated_grads_()
        self._epoch_seen = epoch
        self._set_inner_lr()

    @property
    def rounds(self) -> list[RoundOutcome]:
        """The last ``ROUNDS_KEPT`` rounds' outcomes, oldest first."""
        return list(getattr(self.hv, "rounds", ()))

    def assist(self) -> bool:
        """The coordinator's averaging peer (built with ``auxiliary=True``): take part in the round
        that closes the swarm's epoch when one is due, with weight 0 (it brings no samples), and
        apply its outer step, so it holds the swarm's state. Call every ``ASSIST_EVERY_S``
        seconds; returns True when the epoch moved on."""
        before = self.local_epoch
        if before >= self.settings.epochs:
            return False  # the job is done: no round closes an epoch past the last
        if get_dht_time() - self.hv.tracker.newest_report > self.settings.matchmaking_time + QUIET_SWARM_S:
            # nobody trains (all paused, gone or done): hivemind would end the epoch alone once its
            # estimate of the volunteers' progress runs out, from records they no longer update
            return False
        self._reloaded = False
        self.hv.step(batch_size=0)
        self._resync_auxiliary()
        if self.local_epoch != before:
            if self.inner is not None and not self.overlap:
                self._sync_model_from_anchors()
            self._epoch_seen = self.local_epoch
            return True
        return False

    def _resync_auxiliary(self) -> None:
        """A job's averaging peer other than the first (built with ``state_from``): once a round
        went on without the first one, or the job was rolled back (:meth:`request_resync`), load
        its state, not offering its own meanwhile; at once, not every ``average_state_every``
        epochs as a volunteer does: the volunteers load states from it too."""
        hv = self.hv
        if (not (hv.state_sources and hv.drifted) or hv.state_averager.step_pending
                or time.monotonic() < self._resync_retry_at):
            return
        logger.info("epoch %d: loading the state of the job's first averaging peer", self.local_epoch)
        self.serve_state(False)
        try:
            hv.load_state_from_peers()
        finally:
            if hv.state_averager.loaded:
                hv.drifted = False
                self._synced_epoch = self.local_epoch
                self.serve_state(True)
            else:  # it is down or busy: ask again in a while (this runs every ASSIST_EVERY_S)
                self._resync_retry_at = time.monotonic() + RESYNC_RETRY_S

    _resync_retry_at = -math.inf

    def step(self, batch_size: int) -> StepResult:
        """Call after ``loss.backward()``: clip, step per the mode, and report what happened."""
        if self.settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        before = self.local_epoch
        self._reloaded = False
        if self.inner is None:
            self.hv.step(batch_size=batch_size)
            self.hv.zero_grad()
        else:
            if self._inner_steps == 0:
                # a peer that joins a job under way starts its inner optimizer afresh: Adam's first
                # steps are the learning rate on every coordinate whatever the gradient, which on a
                # model already trained overshoots (measured: a newcomer's first update raised the
                # loss of its own data); it ramps its learning rate up over INNER_WARMUP_STEPS
                self._ramping = self.local_epoch > 0
            if self._ramping:
                self._set_inner_lr()
            self.inner.step()
            self._inner_steps += 1
            if self._ramping and self._inner_steps >= INNER_WARMUP_STEPS:
                self._ramping = False
                self._set_inner_lr()
            self.inner.zero_grad(set_to_none=True)
            self.hv.step(batch_size=batch_size)
            if self.local_epoch != self._epoch_seen and not self.overlap:
                self._sync_model_from_anchors()  # overlapped: _before_anchor_update, when the step lands
        changed = self.local_epoch != before
        self._epoch_seen = self.local_epoch
        if changed:
            self._set_inner_lr()
        self._maybe_resync()
        return StepResult(new_epoch=changed, accepted=not self._reloaded, epoch=self.local_epoch)

    def _maybe_resync(self) -> None:
        """Under robust aggregation peers do not average their states with each other (a plain
        mean any member could poison); a volunteer whose round did not reach the coordinator's
        averaging peers applied an update they did not, and loads their state instead, at most
        every ``average_state_every`` epochs, once its own last round has landed. Under mean
        aggregation a peer whose round failed does the same from the peers ranked above it
        (:meth:`_StateAverager._state_sources`) at its next epoch: its anchor and the others'
        would otherwise stay apart by that epoch's updates until the next state averaging."""
        hv = self.hv
        # under mean aggregation a peer whose round failed reloads at once (the state averaging
        # every average_state_every epochs would bring it back only then)
        every = self.settings.average_state_every if hv.state_sources is not None else 1
        if not hv.drifted or hv.state_averager.step_pending or self.local_epoch < self._synced_epoch + every:
            return
        if hv.state_sources is None and not hv.state_averager.has_source():
            hv.drifted = False  # no peer ranks above this one: the others come to it
            return
        logger.info("epoch %d: a round of this peer since epoch %d did not reach %s: loading their state",
                    self.local_epoch, self._synced_epoch,
                    "the averaging peers" if hv.state_sources is not None else "the other peers")
        hv.load_state_from_peers()
        if hv.state_averager.loaded:
            hv.drifted = False
            self._synced_epoch = self.local_epoch
        else:  # e.g. the averaging peer's own step of this epoch had not landed: again next epoch
            self._synced_epoch = self.local_epoch + 1 - every

    def request_resync(self, epoch: int = 0) -> None:
        """The coordinator rolled the job back at ``epoch`` (a checkpoint it did not adopt): load
        the averaging peers' state at the next step, whatever this peer's own rounds did. (Any
        thread.) Under mean aggregation the reload is from the peers ranked above this one, which
        may hold the state rolled back: there the rollback protects the published model only."""
        self.hv.drifted = True
        self._synced_epoch = -(10**9)

    def quiesce(self) -> None:
        """While the peer is paused: stop polling the swarm's progress (and the throughput clock),
        and drop averaging rounds still looking for a group, so the process goes idle."""
        if self._quiet is not None:
            return
        for attr in ("scheduled_grads", "scheduled_state"):
            control = getattr(self.hv, attr, None)
            if control is not None and not control.done() and control.stage == AveragingStage.LOOKING_FOR_GROUP:
                control.cancel()
                setattr(self.hv, attr, None)
        quiet = self.hv.tracker.pause_updates()
        quiet.__enter__()
        self._quiet = quiet

    def wake(self) -> None:
        """Undo :meth:`quiesce` (call before the next :meth:`step`)."""
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            quiet.__exit__(None, None, None)

    def settle(self) -> None:
        """Wait for an averaging round still running in the background (overlapped local mode) and
        take its outer step: at the end of the job, so the final weights include the last one."""
        try:
            self.hv.state_averager.step(wait_for_delayed_updates=True)
        except Exception as exc:
            logger.warning("the last averaging round did not finish: %s", exc)

    def join(self) -> int:
        """Load the swarm's newest state from a peer (or the keeper) if any has one; returns the epoch."""
        try:
            self.hv.load_state_from_peers()
        except Exception as exc:
            raise TrainingError(f"could not load the swarm's state from peers: {exc}") from exc
        # hivemind checks once, at the first step after a look at the swarm, that this peer is at
        # exactly the swarm's epoch, and downloads the state again when not. Right after a join
        # the only way to fail it is the swarm moving on meanwhile (the averaging peer starts an
        # epoch's round as soon as it sees the target reached): that is hivemind's "others just
        # moved on, move on too" case, not a peer out of sync. Reloading there threw the first
        # epoch's samples away and left the peer an epoch off the averaging peer's count.
        if self.local_epoch > 0 or getattr(self.hv.tracker, "global_epoch", 0) == self.local_epoch:
            self.hv._should_check_synchronization_on_update = False
        return self.local_epoch

    def shutdown(self) -> None:
        self.wake()
        try:
            self.hv.shutdown()
        except Exception as exc:
            logger.warning("optimizer shutdown: %s", exc)

    # ---- state for local checkpoints and the keeper ----
    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this peer: epoch, hivemind/outer and inner optimizer states."""
        state: dict[str, Any] = {"epoch": self.local_epoch, "mode": self.mode, "names": list(self.names)}
        with self.hv.state_averager.lock_optimizer:  # an overlapped outer step may be running
            state["hivemind"] = self.hv.state_dict()
        if self.inner is not None:
            state["inner"] = self.inner.state_dict()
            state["anchors"] = [a.detach().clone() for a in self.anchors]
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the model's trainable weights must be loaded first."""
        if state.get("mode") != self.mode or list(state.get("names", [])) != self.names:
            raise TrainingError("the saved optimizer state belongs to another recipe or model; delete it to start over")
        saved = state["hivemind"]
        self.hv.load_state_dict({**saved, "state": dict(saved["state"])})  # hivemind pops from "state"
        if self.inner is not None:
            self.inner.load_state_dict(state["inner"])
            self._inner_steps = max(self._inner_steps, INNER_WARMUP_STEPS)  # not a fresh state: no ramp
            for anchor, saved in zip(self.anchors, state["anchors"], strict=True):
                anchor.copy_(saved)
            if self.overlap:
                self.hv.grad_averager.take_boundary()
        self._push_main_to_offloaded()
        self._epoch_seen = self.local_epoch
        self._set_inner_lr()

    def exclude(self, peers: dict[str, str]) -> None:
        """Refuse these peers' parts for the rest of the job (peer id -> why), on the coordinator's
        averaging peer under robust aggregation; peers already passed on are not sent again."""
        averager = self.hv.grad_averager
        sent: set[str] = getattr(self, "_excluded_sent", set())
        fresh = {p: why for p, why in peers.items() if p not in sent}
        if not fresh or not isinstance(averager, _GradAverager) or averager.aggregation != "robust":
            return
        averager._outer_pipe.send(("_note_exclusions", [], {"excluded": fresh}))
        self._excluded_sent = sent | set(fresh)

    def serve_state(self, allow: bool = True) -> None:
        """Offer (or stop offering) this peer's state to newcomers, ranked by its epoch."""
        averager = self.hv.state_averager
        if averager.client_mode:
            return  # nobody can download from a peer that accepts no connections
        if getattr(self.hv.grad_averager, "follows_only", False):
            return  # robust aggregation: newcomers load only the averaging peers' state
        averager.allow_state_sharing = allow
        if allow:
            averager.state_sharing_priority = float(self.local_epoch)

    # ---- internals ----
    @torch.no_grad()
    def _sync_model_from_anchors(self) -> None:
        for param, anchor in zip(self.params, self.anchors, strict=True):
            param.copy_(anchor.to(device=param.device, dtype=param.dtype))

    @torch.no_grad()
    def _push_main_to_offloaded(self) -> None:
        """Copy the parameters hivemind optimizes (the model's in sync mode, the anchors in local
        mode) into its host copy, if it keeps one."""
        averager = self.hv.state_averager
        if not averager.offload_optimizer:
            return
        offloaded = [p for group in averager.optimizer.param_groups for p in group["params"]]
        for main, copy in zip(averager.main_parameters, offloaded, strict=True):
            copy.copy_(main.detach().to(device=copy.device, dtype=copy.dtype))

    @torch.no_grad()
    def _before_anchor_update(self) -> None:
        """Overlapped local mode, just before hivemind copies new anchors in: move the local
        parameters by ``new anchor - base``, where the base is what they were at the end of the
        epoch this outer step is for (or the current anchor for any other update of the anchors),
        so they keep what they learned since and take the swarm's update."""
        averager = self.hv.state_averager
        new = [p for group in averager.optimizer.param_groups for p in group["params"]]
        base = self.hv.grad_averager.take_boundary() or self.anchors
        for param, fresh, old in zip(self.params, new, base, strict=True):
            param.add_(torch.sub(fresh, old).to(device=param.device, dtype=param.dtype))

    def _after_state_loaded(self) -> None:
        self._reloaded = True
        if self.hv.state_averager.loaded:
            self._synced_epoch = self.local_epoch
        if self.inner is not None and self.hv.state_averager.loaded:  # nothing came: keep the local progress
            if self.overlap:
                self.hv.grad_averager.take_boundary()
            self._sync_model_from_anchors()
        self._epoch_seen = self.local_epoch
        self._set_inner_lr()

    _inner_steps = 0
    _ramping = False

    def _set_inner_lr(self) -> None:
        if self.inner is None:
            return
        factor = self._lr_at(self.local_epoch)
        if self._ramping:
            factor *= min(1.0, (self._inner_steps + 1) / INNER_WARMUP_STEPS)
        for group, base in zip(self.inner.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor


def _trainable(loaded: Any) -> list[tuple[str, torch.nn.Parameter]]:
    named = list(loaded.trainable_parameters())
    if not named:
        raise TrainingError("the model has no trainable parameters; check the recipe's adapter section")
    return named


def build_optimizer(
    loaded: Any,
    recipe: Recipe,
    *,
    dht: hivemind.DHT,
    run_id: str,
    private_key: RSAPrivateKey | None = None,
    auxiliary: bool = False,
    average_state_every: int = 5,
    reducers: Sequence[str] | None = None,
    leads: bool = True,
    state_from: Sequence[str] = (),
    verbose: bool = False,
) -> SwarmOptimizer:
    """The hivemind optimizer of job ``run_id`` for ``loaded``'s trainable parameters (see module doc).

    Must be called on the process's main thread (hivemind starts averager processes). ``private_key``
    signs hivemind's own progress records (default: the DHT's key). ``auxiliary`` builds a peer that
    never trains (the keeper): it neither reports samples nor offers its state until told to.
    ``reducers``: under robust aggregation (``training.aggregation``), the peer ids of the
    coordinator's averaging peers, the only peers this one lets reduce its rounds (None: any full
    peer; the averaging peer itself passes its own, or all of the job's). A job's averaging peer
    other than the first is built with ``leads=False`` (it joins the first one's groups and reduces
    a share of them) and ``state_from`` (the first one's peer id: where it reloads the state when a
    round went on without it, or after a rollback).
    """
    settings = optimizer_settings(recipe, run_id=run_id, average_state_every=average_state_every)
    named = _trainable(loaded)
    params = [p for _, p in named]
    key = private_key if private_key is not None else getattr(dht, "essaim_private_key", None)
    lr_at = lr_factor(recipe.optimizer, settings.epochs)
    if auxiliary and reducers is None:
        reducers = [str(dht.peer_id)]
    own = str(dht.peer_id)
    authorizer = getattr(dht, "essaim_authorizer", None)
    admission = (Admission(authorizer, run_id, trusted=[own, *(reducers or ())])
                 if isinstance(authorizer, SwarmAuthorizer) else None)
    # the coordinator's averaging peer keeps a sample of each round's updates for validation
    # (essaim.swarm.validation; local mode: an update is where a volunteer's training took the state)
    validating = auxiliary and recipe.training.aggregation == "robust" and settings.mode == "local"
    averaging = dict(aggregation=recipe.training.aggregation, reducers=reducers, admission=admission,
                     validating=validating, leads=leads)
    # robust aggregation with the coordinator's averaging peers as reducers (a public swarm): only
    # they lead this peer's rounds and only their state is loaded; peers average no state. The
    # first averaging peer holds the job's state (its keeper saves and rolls it back): it loads no
    # one's; the others load its.
    trusted = recipe.training.aggregation == "robust" and reducers is not None
    state_sources = None
    if trusted and reducers is not None:
        state_sources = tuple(state_from) if auxiliary else tuple(r for r in reducers if r != own)
    hivemind_class = type("_HivemindOptimizer", (_HivemindOptimizer,),
                          {"admission": admission, "state_sources": state_sources})
    common: dict[str, Any] = dict(
        dht=dht,
        run_id=run_id,
        client_mode=dht.client_mode,  # hivemind.Optimizer mishandles None here in client mode
        target_batch_size=settings.target_batch_size,
        batch_size_per_step=settings.batch_size_per_step,
        matchmaking_time=settings.matchmaking_time,
        averaging_timeout=settings.averaging_timeout,
        # a busy volunteer machine can stall a few seconds mid-round; hivemind's default (the
        # matchmaking time) drops its chunks ("received 50% of input tensors" in the logs)
        next_chunk_timeout=max(settings.matchmaking_time, MIN_CHUNK_TIMEOUT_S),
        load_state_timeout=settings.load_state_timeout,
        grad_compression=settings.compression,
        state_averaging_compression=settings.compression,
        load_state_compression=NoCompression(),
        average_state_every=NO_STATE_AVERAGING if trusted else settings.average_state_every,
        # alone, hivemind looks for peers' progress every 3 s; look at least twice per matchmaking
        # period so peers that start together agree on the epoch from the first one
        tracker_opts={
            "default_refresh_period": min(3.0, max(0.5, settings.matchmaking_time / 2)),
            # hivemind looks again at most every 10 s, and before the first throughput estimate it
            # waits that long: peers then overshoot the first epoch's target batch many times over.
            # The coordinator's averaging peer must see an epoch end as soon as the volunteers do.
            "max_refresh_period": 1.0 if auxiliary else max(2.0, min(10.0, 2 * settings.matchmaking_time)),
            "always_report": auxiliary,
            **({"private_key": key} if key is not None else {}),
        },
        averager_opts={"request_timeout": min(3.0, settings.matchmaking_time / 2)},
        verbose=verbose,
    )
    try:
        if settings.mode == "sync":
            hv = hivemind_class(
                params=params,
                optimizer=torch_optimizer_factory(recipe.optimizer),
                scheduler=partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lr_at),
                grad_averager_factory=partial(_GradAverager, **averaging),
                delay_optimizer_step=False,
                delay_grad_averaging=False,
                **common,
            )
            optimizer = SwarmOptimizer(settings=settings, named_params=named, hv=hv, lr_at=lr_at)
        else:
            anchors = tuple(
                p.detach().to(device="cpu", dtype=torch.float32, copy=True).requires_grad_(True) for p in params
            )
            outer = partial(torch.optim.SGD, lr=settings.outer_lr, momentum=settings.outer_momentum,
                            nesterov=settings.outer_momentum > 0)
            # the coordinator's averaging peer overlaps too: it then moves to the next epoch when a
            # round starts, as the volunteers do, so a volunteer an epoch behind sees that it is
            overlap = settings.overlap
            hv = hivemind_class(
                params=anchors,
                optimizer=outer,
                offload_optimizer=overlap,
                delay_optimizer_step=overlap,
                delay_grad_averaging=overlap,
                delay_state_averaging=overlap,
                grad_averager_factory=partial(PseudoGradientAverager, local_parameters=params, hold_boundary=overlap,
                                              **averaging),
                **common,
            )
            inner = torch_optimizer_factory(recipe.optimizer)(params)
            optimizer = SwarmOptimizer(
                settings=settings, named_params=named, hv=hv, lr_at=lr_at, anchors=anchors, inner=inner,
                overlap=overlap,
            )
    except TrainingError:
        raise
    except Exception as exc:
        raise TrainingError(f"could not start the swarm optimizer: {exc}") from exc
    if trusted and reducers is not None:
        hv.tracker.leaders = frozenset(reducers)
        if not auxiliary:
            hv.state_averager.allow_state_sharing = False  # newcomers load the averaging peers' state only
    if isinstance(hv.grad_averager, _GradAverager):
        hv.grad_averager.epoch_of_round = lambda: hv.local_epoch  # a round closes the epoch it is begun in
        hv.grad_averager.round_timeout = settings.averaging_timeout
    if auxiliary:
        optimizer.serve_state(False)
        if isinstance(hv.grad_averager, _GradAverager):
            hv.grad_averager.min_weight = AVERAGING_PEER_WEIGHT
    logger.info(
        "optimizer: %s mode%s, %d tensors, target batch %d, compression %s",
        settings.mode, ", averaging overlapped with training" if optimizer.overlap else "", len(params),
        settings.target_batch_size, recipe.training.compression,
    )
    return optimizer


def build_auxiliary_optimizer(loaded: Any, recipe: Recipe, *, dht: hivemind.DHT, run_id: str,
                              private_key: RSAPrivateKey | None = None,
                              reducers: Sequence[str] | None = None) -> SwarmOptimizer:
    """For the coordinator's checkpoint keeper: an optimizer that holds the job's state, loads it
    from peers (:meth:`SwarmOptimizer.join`) or a checkpoint (:meth:`SwarmOptimizer.load_state_dict`)
    and serves it to newcomers once :meth:`SwarmOptimizer.serve_state` is called. It never trains:
    never call ``step`` on it. Its DHT must not be in client mode (it has to accept downloads).
    ``reducers``: the job's averaging peers' ids, its own first (default: its own alone).
    """
    return build_optimizer(loaded, recipe, dht=dht, run_id=run_id, private_key=private_key, auxiliary=True,
                           reducers=reducers)

