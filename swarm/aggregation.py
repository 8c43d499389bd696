"""Robust aggregation: what a reducer makes of the parts the members of an averaging round send it.

hivemind's all-reduce cuts the averaged vector into parts; the peer that reduces a part receives it
from every member of the group and hands back their weighted mean. One member that sends a huge,
NaN or sign-flipped update then moves that mean as far as it likes, and the weight each member
claims (its samples) is taken on trust. A :class:`RobustPartReducer` instead, for every part:

1. **refuses** a part that is not finite, has the wrong shape, or comes with a weight that is not a
   finite non-negative number, and every later part of that sender in the round; and every part of
   a sender it named a suspect in an earlier round (:func:`suspects`: an update far out, or far
   and against the group's direction in two rounds running): an attack gets through, bounded, and its sender is shut
   out of the rounds this reducer runs for the rest of the job;
2. **caps claimed weights** at ``WEIGHT_CAP`` times the lower median of the group's claims (weights
   below 1, the coordinator's averaging peer's token weight, are not claims and are not counted):
   a member claiming 100x the samples it computed weighs at most twice a typical member;
3. **clips** with CenteredClip (Karimireddy, He & Jaggi, "Learning from History for Byzantine
   Robust Optimization", 2021): from the weighted mean of the parts clipped to norm ``tau`` =
   ``CLIP_MULTIPLE`` times the group's median update norm, each member moves the centre by at most
   ``tau`` over ``ITERATIONS`` rounds of re-centering. An honest group, whose updates lie within about one norm
   of each other, is averaged as by the plain mean; one member's pull on the result is at most
   its (capped) weight share times ``tau``, whatever it sends.

The cost is on the reducer only: it keeps every member's part until the part is complete (group
size x part size, 512 KB parts by default) and makes ``ITERATIONS + 1`` passes of O(n d) over them
instead of one (measured in bench/README.md); the members send and receive exactly what they would
for the plain mean. A lone member (with the averaging peer only) is held to the norms of recent
rounds instead (:class:`NormHistory`).

:func:`robust_mean` is the arithmetic; :class:`RobustPartReducer` and :class:`RobustAllReduceRunner`
plug it into hivemind's all-reduce (see ``_GradAverager`` in :mod:`essaim.swarm.optimizer`).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartReducer
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor, attach_event_on_finished

WEIGHT_CAP = 2.0  # a member weighs at most this many times the lower median claim of its group
MIN_CLAIM = 1.0  # weights below this (the coordinator's averaging peer's token) are not claims
CLIP_MULTIPLE = 2.0  # tau, in median update norms
ITERATIONS = 3
# a lone member's update norm, at most this many times the recent median: it has the whole weight
# of its round (with 4, one x1000 update of the demo job clipped to 4x the norm, applied by an outer
# step of lr 1, left the model at exact match 0.0 for good)
HISTORY_MULTIPLE = 1.5
HISTORY_ROUNDS = 16
# A member clipped to under SUSPECT_KEPT of its pull on a part (over eight median norms from the
# centre) is a suspect when it also pulls against the group there: its cosine with the part's
# coordinate-wise median is below AGAINST_COSINE (known only in groups of MIN_DIRECTION
# members or more that claim samples). One clipped under NAMED_AT_ONCE_KEPT (over forty median
# norms) is a suspect whatever its direction. A far update along the group's direction is bounded by
# the clipping, never named: honest volunteers are far at times. Measured on the demo job: an honest
# newcomer (a fresh Adam state against the others' long one) at 0.39-0.60 in every round, an
# honest volunteer at 0.24 once on a loaded 2-core machine, where shares of an epoch's samples
# (and so update norms) vary tenfold; an update negated and x10 at 0.18 (against), x1000 at
# 0.0005-0.002. Far and against is named only in the second of two rounds running that a reducer
# found the member so (:func:`mark_repeats`): an honest newcomer was far and against once (kept
# 0.23, cosine -0.51 with the median of three, in a run at 4 s per epoch) and along the group in its
# rounds before and after; a repeated attack is named on its second round, and the clipping bounds
# the first.
SUSPECT_KEPT = 0.25
NAMED_AT_ONCE_KEPT = 0.05
AGAINST_COSINE = 0.0
MIN_DIRECTION = 3


@dataclass(slots=True)
class Verdict:
    """What a reducer made of one sender's parts in a round: refused (with the reason), or the
    smallest share of its pull it kept on any part (1.0: never clipped); ``cosine``: the lowest
    cosine with the group's median on a part where it was clipped under ``SUSPECT_KEPT`` (1.0
    when never so clipped, or the group was too small to tell a direction)."""

    refused: str = ""
    kept: float = 1.0
    parts: int = 0
    cosine: float = 1.0
    # clipped under SUSPECT_KEPT on a part that fewer than MIN_DIRECTION members claiming samples
    # sent: a pair, in which the far one may be either (bounded, never named: CenteredClip's centre
    # moves toward a far member of two by half the radius each pass, and clips the near one too)
    in_pair: bool = False
    # the samples its parts carried into the average: the weight it sent (the least over its
    # parts; 0 when refused). A claim like its records, bounded the same way by the ledger; the
    # reduction's cap on a large claim bounds its pull, not the work it did
    weight: float = math.inf
    # far and against the group (:func:`far_against`) in this reducer's previous round with it too
    again: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"refused": self.refused, "kept": round(self.kept, 4), "parts": self.parts,
                "cosine": round(self.cosine, 4), "in_pair": self.in_pair, "again": self.again,
                "weight": 0.0 if self.refused or not math.isfinite(self.weight) else round(self.weight, 3)}


def part_problem(part: torch.Tensor, shape: torch.Size, weight: float) -> str:
    """Why a received part cannot be aggregated ("" when it can)."""
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        return f"weight {weight!r} is not a finite non-negative number"
    if tuple(part.shape) != tuple(shape):
        return f"a part of shape {tuple(part.shape)} where {tuple(shape)} was expected"
    if not bool(torch.isfinite(part).all()):
        return "a part with NaN or infinite values"
    return ""


def capped_weights(weights: Sequence[float]) -> torch.Tensor:
    """Claims capped at ``WEIGHT_CAP`` x the lower median of the claims of at least ``MIN_CLAIM``."""
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    claims = w[w >= MIN_CLAIM]
    if claims.numel() == 0:
        return w
    lower_median = torch.sort(claims).values[(claims.numel() - 1) // 2]
    return torch.clamp(w, max=float(WEIGHT_CAP * lower_median))


def weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise weighted median of the rows of ``x`` (n x d) under weights ``w`` (n):
    where the weight below and above is balanced, the midpoint of the two rows around it (as the
    plain median of an even count)."""
    values, order = torch.sort(x, dim=0)
    cumulative = w.to(x.dtype)[order].cumsum(dim=0)
    half = cumulative[-1:] / 2
    last = x.shape[0] - 1
    lower = (cumulative < half).sum(dim=0, keepdim=True).clamp(max=last)
    upper = (cumulative <= half).sum(dim=0, keepdim=True).clamp(max=last)
    return (values.gather(0, lower).squeeze(0) + values.gather(0, upper).squeeze(0)) / 2


def median_norm(norms: torch.Tensor, weights: torch.Tensor) -> float:
    """The median update norm of the members that claim samples (all members when none does),
    each counted once: a scale no member can buy with the samples it claims (a member claiming
    twice the others, with a zero update, would otherwise be the weighted median, and clip every
    honest member of its group to nothing)."""
    claiming = norms[weights >= MIN_CLAIM]
    if claiming.numel() == 0:
        claiming = norms
    return float(weighted_median(claiming[:, None].to(torch.float32), torch.ones(claiming.numel()))[0])


def robust_mean(parts: Sequence[torch.Tensor], weights: Sequence[float], *, clip_multiple: float = CLIP_MULTIPLE,
                iterations: int = ITERATIONS, max_norm: float | None = None,
                reference: float | None = None) -> tuple[torch.Tensor, list[float]]:
    """CenteredClip of ``parts`` (all finite, of one shape) under capped ``weights``, each part's
    norm first clipped to ``max_norm`` when given (the bound of :class:`NormHistory`). The radius
    is ``clip_multiple`` times the group's :func:`median_norm`, at most ``HISTORY_MULTIPLE`` times
    ``reference`` (the median of recent rounds, :meth:`NormHistory.median`) when given and fewer
    than ``MIN_DIRECTION`` members claim samples (a pair: one far update would set its median).

    Returns the aggregate (float32, the parts' shape) and, per part, the share of its pull that
    was kept (1.0: not clipped).
    """
    if not parts:
        raise ValueError("nothing to aggregate")
    shape = parts[0].shape
    x = torch.stack([p.detach().reshape(-1).to(torch.float32) for p in parts])
    w = capped_weights(weights).to(torch.float32)
    if float(w.sum()) <= 0:  # nobody claims anything: every member counts the same
        w = torch.ones_like(w)
    shares = torch.ones(x.shape[0])
    if max_norm is not None:
        norms = torch.linalg.vector_norm(x, dim=1)
        shares = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-30), shares)
        x = x * shares[:, None]
    if x.shape[0] == 1:
        return x[0].reshape(shape), [float(shares[0])]
    # the radius: a multiple of the group's median update norm. (The median distance to a
    # coordinate-wise median would do in a large group, but in a small one that median is often a
    # member itself, whose distance 0 would clip everyone else away; and it costs a sort of n x d.)
    norms = torch.linalg.vector_norm(x, dim=1)
    capped = capped_weights(weights).to(torch.float32)
    scale = median_norm(norms, capped)
    if reference is not None and reference > 0 and int((capped >= MIN_CLAIM).sum()) < MIN_DIRECTION:
        # two members: their median is the midpoint of their norms, which one far update sets
        scale = min(scale, reference * HISTORY_MULTIPLE)
    tau = float(clip_multiple * scale)
    # start from the mean of the parts clipped to norm tau: no member pulls it further than its
    # weight share times tau; then CenteredClip re-centres around it
    clip = torch.where(norms > tau, tau / norms.clamp(min=1e-30), torch.ones_like(norms))
    center = (w * clip) @ x / w.sum()
    kept = clip
    for _ in range(iterations):
        offsets = x - center
        distances = torch.linalg.vector_norm(offsets, dim=1)
        kept = torch.where(distances > tau, tau / distances.clamp(min=1e-30), torch.ones_like(distances))
        center = center + (w * kept) @ offsets / w.sum()
    return center.reshape(shape), [float(k) for k in kept * shares]


def cosines_with_median(parts: Sequence[torch.Tensor], weights: Sequence[float], members: Sequence[int]) -> dict[int, float]:
    """The cosine of each of ``members`` (indices into ``parts``) with the coordinate-wise median
    of the *other* members' parts that claim samples, when at least ``MIN_DIRECTION`` members
    claim (a member is not its own reference: with three, its own part would often be the
    median's middle value and pull the cosine its way); else {}."""
    w = capped_weights(weights)
    claiming = [i for i in range(len(parts)) if float(w[i]) >= MIN_CLAIM]
    if len(claiming) < MIN_DIRECTION:
        return {}
    flat = {i: parts[i].detach().reshape(-1).to(torch.float32) for i in claiming}
    out = {}
    for i in members:
        others = [flat[j] for j in claiming if j != i]
        median = weighted_median(torch.stack(others), torch.ones(len(others)))  # each once: no claim buys it
        own = parts[i].detach().reshape(-1).to(torch.float32)
        denominator = float(torch.linalg.vector_norm(own) * torch.linalg.vector_norm(median))
        out[i] = float(own @ median) / denominator if denominator > 0 else 1.0
    return out


def group_norm(parts: Sequence[torch.Tensor], weights: Sequence[float]) -> float | None:
    """The :func:`median_norm` of a group's parts, when two or more members claim samples (what
    :class:`NormHistory` records; a lone member is nobody's reference)."""
    w = capped_weights(weights)
    if int((w >= MIN_CLAIM).sum()) < 2:
        return None
    norms = torch.stack([torch.linalg.vector_norm(p.detach().reshape(-1).to(torch.float32)) for p in parts])
    return median_norm(norms, w.to(torch.float32))


class NormHistory:
    """The median update norms of the last rounds, per slice of the averaged vector, kept by a
    reducer across rounds. A member alone with the averaging peer has no group to be compared
    with; its part's norm is then clipped to ``HISTORY_MULTIPLE`` x the median of the slice's
    recent norms (the last ``HISTORY_ROUNDS`` rounds that had two or more members). Before any
    such round there is no bound: the first rounds of a job, if only an attacker is in them, are
    not protected here (the keeper's evaluation of checkpoints is the backstop)."""

    def __init__(self) -> None:
        self.norms: dict[tuple[int, int], deque[float]] = {}

    def median(self, key: tuple[int, int]) -> float | None:
        """The median of the slice's recent group norms (None before any)."""
        seen = self.norms.get(key)
        if not seen:
            return None
        return float(torch.tensor(list(seen)).median())

    def bound(self, key: tuple[int, int]) -> float | None:
        median = self.median(key)
        return None if median is None else HISTORY_MULTIPLE * median

    def add(self, key: tuple[int, int], norm: float | None) -> None:
        if norm is not None and math.isfinite(norm) and norm > 0:  # a slice nobody moved bounds nothing
            self.norms.setdefault(key, deque(maxlen=HISTORY_ROUNDS)).append(norm)


class RobustPartReducer(TensorPartReducer):
    """hivemind's TensorPartReducer that keeps every sender's part and reduces it with
    :func:`robust_mean` instead of summing it into a weighted mean. ``verdicts`` (by sender
    index) says what it made of each sender."""

    def __init__(self, part_shapes: Sequence[torch.Size], num_senders: int, *, history: NormHistory | None = None,
                 part_keys: Sequence[tuple[int, int]] = (), excluded: dict[int, str] | None = None,
                 keep_whole: Sequence[int] = ()) -> None:
        self.received: dict[int, tuple[torch.Tensor, float]] = {}
        # senders whose every part is kept as received, for essaim.swarm.validation
        self.whole: dict[int, list[torch.Tensor]] = {i: [] for i in keep_whole}
        self.verdicts: dict[int, Verdict] = {i: Verdict() for i in range(num_senders)}
        for index, why in (excluded or {}).items():  # senders named suspects in earlier rounds
            self.verdicts[index].refused = why
        self.history = history if history is not None else NormHistory()
        # (offset, size) of each part in the averaged vector: the same slice across rounds
        self.part_keys = list(part_keys) or [(i, int(math.prod(s))) for i, s in enumerate(part_shapes)]
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self) -> None:
        self.received = {}
        super().reset_accumulators()

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor,
                              weight: float = 1.0) -> torch.Tensor:
        """hivemind's, but the part is kept (or refused) rather than summed."""
        if not 0 <= sender_index < self.num_senders or not 0 <= part_index < self.num_parts:
            raise AllreduceException(f"sender {sender_index} sent part {part_index}: out of range")
        self.num_parts_received[sender_index] += 1
        while part_index > self.current_part_index:  # wait for the previous parts to be reduced
            await self._next_part()
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {type(self).__name__}")
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        if part_index != self.current_part_index:
            raise AllreduceException(f"sender {sender_index} sent part {part_index} twice")
        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            verdict = self.verdicts[sender_index]
            verdict.parts += 1
            if not verdict.refused:
                verdict.refused = part_problem(tensor_part, self.part_shapes[part_index], weight)
            if not verdict.refused:
                self.received[sender_index] = (tensor_part, float(weight))
                if sender_index in self.whole:  # weight 0: left out in whole_updates
                    self.whole[sender_index].append(tensor_part.detach().reshape(-1).to(torch.float32).clone())
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await current_part_future

    async def _next_part(self) -> None:
        finished = asyncio.create_task(self.finished.wait())
        try:
            await asyncio.wait({self.current_part_future, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()

    def check_current_part_finished(self) -> None:
        if self.current_part_accumulated_from < self.num_current_senders:
            return
        senders = sorted(i for i in self.received if not self.verdicts[i].refused)
        if senders:
            key = self.part_keys[self.current_part_index]
            parts = [self.received[i][0] for i in senders]
            weights = [self.received[i][1] for i in senders]
            reference = group_norm(parts, weights)
            # a group is its own reference; a lone member is held to the recent rounds'
            bound = self.history.bound(key) if reference is None else None
            recent = self.history.median(key)  # the recent rounds', before this one counts
            aggregate, kept = robust_mean(parts, weights, max_norm=bound, reference=recent)
            self.history.add(key, reference)
            for i, share in zip(senders, kept, strict=True):
                self.verdicts[i].kept = min(self.verdicts[i].kept, share)
                self.verdicts[i].weight = min(self.verdicts[i].weight, self.received[i][1])
            far = [n for n, share in enumerate(kept) if share < SUSPECT_KEPT]
            pair = int((capped_weights(weights) >= MIN_CLAIM).sum()) < MIN_DIRECTION
            if far and pair:
                for n in far:  # a pair: which of the two is far is not known
                    self.verdicts[senders[n]].in_pair = True
            elif far:  # which way do they pull? (sorts of the group's parts: only when someone is far)
                for n, cosine in cosines_with_median(parts, weights, far).items():
                    verdict = self.verdicts[senders[n]]
                    verdict.cosine = min(verdict.cosine, cosine)

        else:  # everyone's part was refused: nothing moves
            aggregate = torch.zeros(self.part_shapes[self.current_part_index])
        self.current_part_future.set_result(aggregate)
        self.reset_accumulators()


class RobustAllReduceRunner(AllReduceRunner):
    """hivemind's AllReduceRunner whose reducer is a :class:`RobustPartReducer`."""

    def __init__(self, *, history: NormHistory | None = None, excluded: dict[str, str] | None = None,
                 keep_whole: Collection[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        placeholder: TensorPartReducer = self.tensor_part_reducer
        placeholder.finished.set()  # never used: finalizing it must not warn of missing parts
        # where this peer's parts begin in the averaged vector: hivemind hands each reducer whole
        # parts, in order, to the one a part overlaps most, so the slice begins after every part
        # of the reducers before it (not at the load balancer's pivot)
        container = self.tensor_part_container
        offset = self.own_offset = sum(
            part.numel() for parts in container._input_parts_by_peer[: self.ordered_peer_ids.index(self.peer_id)]
            for part, _ in parts)
        keys = []
        for shape in placeholder.part_shapes:
            size = int(math.prod(shape))
            keys.append((offset, size))
            offset += size
        shut_out = {i: why for i, peer in enumerate(self.sender_peer_ids) if (why := (excluded or {}).get(str(peer)))}
        whole = [i for i, peer in enumerate(self.sender_peer_ids) if str(peer) in keep_whole]
        self.tensor_part_reducer: TensorPartReducer = RobustPartReducer(
            placeholder.part_shapes, placeholder.num_senders, history=history, part_keys=keys, excluded=shut_out,
            keep_whole=whole)

    # Every member ends the round with the same tensors: the reducer sends each member the
    # averaged part itself (in the round's codec) rather than hivemind's "average minus what you
    # sent", and applies that same codec to its own copy. With hivemind's deltas each receiver
    # rounds a different difference, and the coordinator's averaging peer, which reduces the whole
    # vector in float32, drifted from the volunteers by the codec's rounding times Adam's gain.

    async def _communicate_with_peer(self, peer_id: Any) -> None:
        peer_index = self.ordered_peer_ids.index(peer_id)
        container = self.tensor_part_container
        if peer_id == self.peer_id:
            sender_index = self.sender_peer_ids.index(peer_id)
            infos = [info for _, info in container._input_parts_by_peer[peer_index]]
            for part_index, tensor_part in enumerate(self.parts_for_local_averaging):
                averaged = await self.tensor_part_reducer.accumulate_part(
                    sender_index, part_index, tensor_part, weight=self.weight)
                sent = deserialize_torch_tensor(container.compression.compress(averaged, infos[part_index]))
                container.register_processed_part(peer_index, part_index, sent - tensor_part)
            return
        own = [part for part, _ in container._input_parts_by_peer[peer_index]]  # views, unchanged until the end
        try:
            done_sending = asyncio.Event()
            inputs = attach_event_on_finished(self._generate_input_for_peer(peer_index), done_sending)
            stream = await self._get_peer_stub(peer_id).rpc_aggregate_part(inputs)
            if self.should_delay_results(self.peer_id):
                await done_sending.wait()

            def _deserialize(msg: Any) -> torch.Tensor:
                if msg.code != averaging_pb2.AVERAGED_PART:
                    raise AllreduceException(f"{peer_id} sent {averaging_pb2.MessageCode.Name(msg.code)}")
                return deserialize_torch_tensor(msg.tensor_part)

            part_index = 0
            async for averaged in amap_in_executor(_deserialize, aiter_with_timeout(stream, self.reducer_timeout),
                                                   max_prefetch=container.prefetch):
                if part_index >= len(own) or averaged.shape != own[part_index].shape:
                    raise AllreduceException(f"{peer_id} sent a part that is not the one it was given")
                container.register_processed_part(peer_index, part_index, averaged - own[part_index])
                part_index += 1
            if part_index != container.num_parts_by_peer[peer_index]:
                raise AllreduceException(f"peer {peer_id} sent {part_index} parts, but we expected "
                                         f"{container.num_parts_by_peer[peer_index]}")
        except BaseException:
            container.register_failed_reducer(peer_index)
            raise

    async def _accumulate_parts_streaming(self, stream: Any, sender_index: int) -> Any:
        part_index = 0
        try:
            loop = asyncio.get_event_loop()
            async for tensor_part, weight, part_compression in amap_in_executor(
                lambda msg: (deserialize_torch_tensor(msg.tensor_part), msg.weight, msg.tensor_part.compression),
                stream, max_prefetch=self.tensor_part_container.prefetch,
            ):
                try:
                    averaged_part = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight)
                    part_index += 1
                except BannedException:
                    break  # the sender was banned: its parts are no longer aggregated
                serialized = await loop.run_in_executor(None, serialize_torch_tensor, averaged_part, part_compression)
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=serialized)
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])

    def verdicts(self) -> dict[str, Verdict]:
        """By sender peer id: what this peer, as a reducer, made of each sender's parts (empty
        when it reduced nothing)."""
        reducer = self.tensor_part_reducer
        if not isinstance(reducer, RobustPartReducer) or reducer.num_parts == 0:
            return {}
        return {str(self.sender_peer_ids[i]): v for i, v in reducer.verdicts.items() if v.parts}


    def whole_updates(self) -> dict[str, torch.Tensor]:
        """By sender peer id: the update of each sender kept for validation (``keep_whole``), the
        slice of the averaged vector this peer reduced (from :attr:`own_offset`; the whole update
        when it reduced all of it), when every part of that sender came in, unrefused."""
        reducer = self.tensor_part_reducer
        if not isinstance(reducer, RobustPartReducer) or reducer.num_parts == 0:
            return {}
        # a sender whose parts carried no samples (one that just loaded the state tags along with
        # weight 0) moved nothing: nothing to check, and the ledger grants it nothing for the round
        return {str(self.sender_peer_ids[i]): torch.cat(parts) for i, parts in reducer.whole.items()
                if len(parts) == reducer.num_parts and not reducer.verdicts[i].refused
                and reducer.verdicts[i].weight >= MIN_CLAIM}


class Gathered(dict):  # type: ignore[type-arg]
    """hivemind's gathered data of a round (peer id -> what it sent along), with the reducer's
    verdicts on its senders (peer id -> :meth:`Verdict.as_dict`) and the updates it kept for
    validation (peer id -> flat tensor: the slice of the averaged vector from ``offset`` that this
    peer reduced); pickles across processes."""

    def __init__(self, gathered: Any = (), *, verdicts: dict[str, dict[str, Any]] | None = None,
                 updates: dict[str, torch.Tensor] | None = None, offset: int = 0) -> None:
        super().__init__(gathered)
        self.verdicts = dict(verdicts or {})
        self.updates = dict(updates or {})
        self.offset = offset


def _far_and_against(kept: float, cosine: float) -> bool:
    """Clipped to under ``SUSPECT_KEPT`` of its pull (but not gross) while pulling against the
    group (cosine with its median under ``AGAINST_COSINE``)."""
    return NAMED_AT_ONCE_KEPT <= kept < SUSPECT_KEPT and cosine < AGAINST_COSINE


def far_against(verdict: Verdict) -> bool:
    """:func:`_far_and_against`, unrefused, in a group that tells a direction (not a pair)."""
    return not verdict.refused and not verdict.in_pair and _far_and_against(verdict.kept, verdict.cosine)


def mark_repeats(verdicts: dict[str, Verdict], against: set[str]) -> None:
    """Set :attr:`Verdict.again` on each sender far and against the group (:func:`far_against`)
    in this round and in the last round of its that this reducer ran. ``against`` (peer ids far
    and against in their last round) is the reducer's memory across rounds, updated in place: a
    round along the group clears it; a refused sender, or a pair's (where which of two is far is not
    known), leaves it as it was."""
    for peer, verdict in verdicts.items():
        if far_against(verdict):
            verdict.again = peer in against
            against.add(peer)
        elif not verdict.refused and not verdict.in_pair:
            against.discard(peer)


def suspects(verdicts: dict[str, Verdict] | dict[str, dict[str, Any]]) -> dict[str, str]:
    """Peer id -> why it is suspect: refused parts, an update clipped to under
    ``NAMED_AT_ONCE_KEPT`` of its pull, or one clipped under ``SUSPECT_KEPT`` that pulls against
    the group (cosine with its median under ``AGAINST_COSINE``) in two rounds running
    (:func:`mark_repeats`); never one clipped in a pair."""
    out: dict[str, str] = {}
    for peer, verdict in verdicts.items():
        v = verdict.as_dict() if isinstance(verdict, Verdict) else verdict
        kept = float(v.get("kept", 1.0))
        cosine = float(v.get("cosine", 1.0))
        if v.get("in_pair") and not v.get("refused"):
            continue  # two members: which of them is far is not known
        if v.get("refused"):
            out[peer] = f"refused: {v['refused']}"
        elif kept < NAMED_AT_ONCE_KEPT:
            out[peer] = f"clipped to {kept * 100:.2g}% of its pull"
        elif v.get("again") and _far_and_against(kept, cosine):
            out[peer] = (f"clipped to {kept:.0%} of its pull, against the group (cosine {cosine:.2f}),"
                         " in two rounds running")
    return out
