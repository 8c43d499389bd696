"""The swarm monitor: turns the signed progress records of a job's DHT into metrics and ledger rows.

Each volunteer's trainer publishes, signed with its identity key, its running totals for the job
(samples, compute seconds) with its epoch, loss and samples/s (:mod:`essaim.swarm.records`). The
monitor maps each record to a volunteer by the key that signed it (never by the id written inside
it), and appends to the ledger the growth of each volunteer's totals since its last row. Because
the records carry totals, a coordinator that was down catches up on its first read.

Self-reported numbers are not trusted alone: a claim is capped by what the volunteer could have
done, ``max_rate`` samples/s (the swarm's measured per-peer throughput times a margin) over the
time since its last accepted row (never by the compute time it claims), and by the samples the
whole swarm can have gathered (``target_batch_size`` per epoch, with ``SWARM_MARGIN`` for the
samples peers add while an epoch's averaging round gathers). Capped and refused claims are noted
on the row; a claim of which nothing can be accepted yet writes no row (the excess stays claimed
and is accepted once time and the swarm's progress allow it). Banned volunteers' later work is
refused, and their records count neither in the job's metrics nor in the rates used for caps.

Pure logic here; :mod:`essaim.coordinator.jobrunner` feeds it and writes the results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from essaim.protocol.types import JobMetrics

LIVE_RECORD_S = 45.0
RATE_MARGIN = 3.0
MIN_RATE_ALLOWANCE = 50.0  # samples/s a volunteer may always claim before the swarm rate is known
# peers go on computing until they see the swarm reach the target and while the averaging round
# gathers, so an epoch holds more than target_batch_size samples: ~1.3x measured with 2 fast peers
# and a 192-sample target, a few % with the demo's 4,800. Raise it when honest volunteers' rows say
# "capped ... by the swarm's progress". claims() adds the swarm's rate times ``round_seconds`` per
# epoch: with overlapped rounds peers train through the whole round, which on short epochs is
# several times the target (2 peers at ~700 samples/s, 1.5 s matchmaking, 256-sample epochs).
SWARM_MARGIN = 1.5
# epochs of a volunteer's work granted ahead of the rounds that carry it (robust aggregation): the
# one it computes while its last round runs (overlapped), and the one that round closes
IN_FLIGHT_EPOCHS = 2


@dataclass(slots=True)
class PeerReport:
    """One volunteer's latest record, already mapped to the volunteer by its signing key."""

    volunteer_id: str
    epoch: int
    samples: int
    compute_seconds: float
    samples_per_second: float
    loss: float | None
    updated_at: float
    banned: bool = False


@dataclass(slots=True)
class Accepted:
    """What the ledger already holds for one volunteer on this job (``samples``, ``compute_seconds``,
    the time ``at`` of its last row), and what was refused for good (``refused_*``, a banned
    volunteer's work: it is never claimable again and takes no room from the others)."""

    samples: int = 0
    compute_seconds: float = 0.0
    at: float = 0.0
    refused_samples: int = 0
    refused_compute: float = 0.0
    # the volunteer's claimed totals that rows already account for (a row's claim is the growth
    # since: what a cap held back is granted by a later row, whose claim it is not)
    claimed_samples: int = 0
    claimed_compute: float = 0.0


@dataclass(slots=True)
class Claim:
    """A ledger row to write: ``samples`` and ``compute_seconds`` granted, out of ``claimed_*``
    (what the volunteer's records claimed since its last row; ``note`` says why they differ)."""

    volunteer_id: str
    epoch: int
    samples: int
    compute_seconds: float
    note: str = ""
    claimed_samples: int = 0
    claimed_compute_seconds: float = 0.0


@dataclass(slots=True)
class MonitorState:
    accepted: dict[str, Accepted] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


def swarm_metrics(
    reports: Mapping[str, PeerReport],
    *,
    target_epochs: int,
    target_batch_size: int,
    swarm_epoch: int | None = None,
    previous: JobMetrics | None = None,
    averaged: Collection[str] | None = None,
    now: float | None = None,
) -> JobMetrics:
    """The job's metrics from its peers' latest records (live = updated in the last 45 s): the
    epoch the averaging peer's, or that at least half of the records reached (:func:`reached_epoch`)
    when further on; the samples are what the records claim (the job runner replaces them with the ledger's granted
    total), the throughput the live volunteers' reported rates, each capped at :func:`rate_cap`.

    ``live_peers`` counts the live volunteers whose updates the last averaging round averaged
    (``averaged``, volunteer ids, from the coordinator's averaging peer), not those that merely
    report progress; without ``averaged`` (no averaging peer), the live ones."""
    now = time.time() if now is None else now
    trusted = [r for r in reports.values() if not r.banned]
    live = [r for r in trusted if now - r.updated_at <= LIVE_RECORD_S]
    peers = len(live) if averaged is None else len({r.volunteer_id for r in live} & set(averaged))
    epoch = max(reached_epoch(trusted), swarm_epoch or 0, previous.epoch if previous else 0)
    cap = rate_cap(reports)
    rate = sum(min(r.samples_per_second, cap) for r in live)
    losses = [r.loss for r in live if r.loss is not None and math.isfinite(r.loss)]
    loss = sum(losses) / len(losses) if losses else (previous.loss if previous else None)
    remaining = max(0, target_epochs - epoch) * target_batch_size
    eta = remaining / rate if rate > 0 else 0.0
    metrics = JobMetrics(
        epoch=epoch,
        target_epochs=target_epochs,
        samples=sum(r.samples for r in trusted),
        samples_per_second=rate,
        loss=loss,
        live_peers=peers,
        eta_seconds=eta,
    )
    if previous is not None:
        metrics.eval_metric = previous.eval_metric
        metrics.eval_metric_name = previous.eval_metric_name
    return metrics


def reached_epoch(reports: Collection[PeerReport]) -> int:
    """The epoch at least half of the volunteers' records say they reached (the lower median; a
    record that went stale still says how far its volunteer got). An epoch is a volunteer's claim:
    taking the highest let one volunteer's forged epoch set the job's, and the job runner then
    caught its averaging peer up to it, completing the job at once."""
    epochs = sorted(r.epoch for r in reports)
    return epochs[(len(epochs) - 1) // 2] if epochs else 0


def rate_cap(reports: Mapping[str, PeerReport]) -> float:
    """The most samples/s one volunteer is taken at its word for: the median of the rates the
    unbanned volunteers report, times ``RATE_MARGIN`` (at least ``MIN_RATE_ALLOWANCE``)."""
    live_rates = sorted(r.samples_per_second for r in reports.values() if not r.banned and r.samples_per_second > 0)
    typical = live_rates[len(live_rates) // 2] if live_rates else 0.0
    return max(MIN_RATE_ALLOWANCE, typical * RATE_MARGIN)


def claims(
    reports: Mapping[str, PeerReport],
    state: MonitorState,
    *,
    target_batch_size: int,
    swarm_epoch: int,
    round_seconds: float = 0.0,
    now: float | None = None,
    held: Collection[str] = (),
    refused: Mapping[str, str] | None = None,
    carried: Mapping[str, float] | None = None,
    unobserved_epochs: int = 0,
) -> list[Claim]:
    """The ledger rows to append: each volunteer's growth since its last accepted row, checked.

    Validation (essaim.swarm.validation) decides too: a volunteer in ``held`` (its last checked
    update failed) gets no row until a check passes; one in ``refused`` (dropped from the job's
    rounds after failing, with why) has everything it claims since its last row refused.

    ``carried`` (robust aggregation: volunteer -> the samples its updates carried into the job's
    averages, :meth:`essaim.coordinator.rounds.RoundBook.carried`): a volunteer is granted at most
    that, plus ``IN_FLIGHT_EPOCHS`` epochs of work whose round has not come yet, plus an epoch's
    target for each of the ``unobserved_epochs`` (epochs of the swarm's no averaging peer saw: the
    job runner was down, and the volunteers trained on; the other caps bound those); the rest
    waits for its rounds. Samples that never went into the model (a round sent with weight 0, one
    refused) are never granted."""
    refused = refused or {}
    now = time.time() if now is None else now
    max_rate = rate_cap(reports)
    # peers go on computing while an epoch's round gathers (overlapped rounds: the whole round), at
    # most at the rate each may claim: an epoch holds up to that much more than its target batch
    swarm_rate = sum(min(r.samples_per_second, max_rate) for r in reports.values()
                     if not r.banned and r.samples_per_second > 0)
    per_epoch = target_batch_size * SWARM_MARGIN + swarm_rate * round_seconds
    swarm_cap = int(max(1, swarm_epoch + 1) * per_epoch)
    out: list[Claim] = []
    for report in sorted(reports.values(), key=lambda r: r.volunteer_id):
        before = state.accepted.get(report.volunteer_id, Accepted(at=state.started_at))
        new_samples = report.samples - before.samples - before.refused_samples
        new_compute = max(0.0, report.compute_seconds - before.compute_seconds - before.refused_compute)
        if new_samples <= 0:
            continue
        claimed_samples = max(0, report.samples - before.claimed_samples)
        claimed_compute = max(0.0, report.compute_seconds - before.claimed_compute)
        seen_samples = max(before.claimed_samples, report.samples)
        seen_compute = max(before.claimed_compute, report.compute_seconds)
        if report.banned or report.volunteer_id in refused:
            why = "banned" if report.banned else f"failed validation: {refused[report.volunteer_id]}"
            out.append(Claim(report.volunteer_id, report.epoch, 0, 0.0, f"refused {new_samples} samples: {why}",
                             claimed_samples, claimed_compute))
            state.accepted[report.volunteer_id] = Accepted(
                before.samples, before.compute_seconds, before.at,
                before.refused_samples + new_samples, before.refused_compute + new_compute, seen_samples, seen_compute,
            )
            continue
        if report.volunteer_id in held:
            continue  # its last checked update removed no loss: no credit until one does
        notes = []
        elapsed = max(1.0, now - before.at)
        allowed = int(max_rate * elapsed)
        if new_samples > allowed:
            notes.append(f"capped {new_samples} to {allowed} samples by throughput")
            new_samples = allowed
        total_others = sum(a.samples for vid, a in state.accepted.items() if vid != report.volunteer_id)
        room = max(0, swarm_cap - total_others - before.samples)
        if new_samples > room:
            notes.append(f"capped {new_samples} to {room} samples by the swarm's progress")
            new_samples = room
        if carried is not None:
            ahead = (IN_FLIGHT_EPOCHS + max(0, unobserved_epochs)) * target_batch_size
            room = max(0, int(carried.get(report.volunteer_id, 0.0) + ahead) - before.samples)
            if new_samples > room:
                notes.append(f"capped {new_samples} to {room} samples by what its rounds carried")
                new_samples = room
        if new_compute > elapsed * 1.5 + 5:
            notes.append(f"capped compute {new_compute:.0f}s to {elapsed:.0f}s")
            new_compute = elapsed
        if new_samples <= 0 and new_compute <= 0:
            continue  # nothing acceptable yet: no row, and the time since the last row keeps counting
        state.accepted[report.volunteer_id] = Accepted(
            before.samples + new_samples, before.compute_seconds + new_compute, now,
            before.refused_samples, before.refused_compute, seen_samples, seen_compute,
        )
        out.append(Claim(report.volunteer_id, report.epoch, new_samples, new_compute, "; ".join(notes),
                         claimed_samples, claimed_compute))
    return out
