"""The averaging rounds of one job, as the coordinator's averaging peer took part in them.

    book = RoundBook(job_dir / ROUNDS_FILE)   # reads what a previous runner wrote
    book.add(outcome, ["v-alice", "v-bob"])  # one line of rounds.jsonl per round
    book.averaged_volunteers()               # {"v-alice", "v-bob"}: the job's peer count
    book.describe_last()                     # "epoch 4: averaged 2 volunteers"
    book.why_not_averaged(target_epochs)     # None, or why the job must not call itself done

The averaging peer is in every group of a public swarm (NAT-ed volunteers can only join groups
led by a full peer), so its view is the job's: which volunteers' updates went into each epoch.
A round in which it averaged with fewer than two volunteers is reported as such, and a job whose
volunteers never averaged together is not completed as if they had. Used by
:mod:`essaim.coordinator.jobrunner`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.jsonl"
AVERAGERS_DIR = "averagers"  # the job's further averaging peers' directories (essaim.coordinator.averagers)


@dataclass(frozen=True, slots=True)
class RoundEntry:
    """One round: the epoch it closed, the volunteers whose updates it averaged, why it failed."""

    epoch: int
    volunteers: tuple[str, ...] = ()
    peers: int = 0  # every peer of the group, the coordinator's included
    error: str = ""
    at: float = field(default_factory=time.time)
    # volunteer id -> why its update was refused or clipped hard (robust aggregation); refused
    # volunteers are not among ``volunteers``
    suspects: dict[str, str] = field(default_factory=dict)
    # volunteer id -> the smallest share of its pull the averaging peer kept (robust aggregation;
    # 1.0: not clipped), for every volunteer whose parts it reduced
    kept: dict[str, float] = field(default_factory=dict)
    # volunteer id -> the validation of its update (essaim.swarm.validation.Check.as_dict), for the
    # volunteers whose update the averaging peer checked this round
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # volunteer id -> the samples its update carried into this round's average (its claimed weight,
    # capped as the reduction capped it; 0 when refused), for every volunteer whose parts it reduced
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def averaged(self) -> bool:
        """Whether two or more volunteers' updates were averaged together in this round."""
        return not self.error and len(self.volunteers) >= 2


class RoundBook:
    """The job's rounds in memory and in ``rounds.jsonl`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[RoundEntry] = []
        try:
            lines = path.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                data = json.loads(line)
                self.entries.append(RoundEntry(
                    epoch=int(data["epoch"]), volunteers=tuple(str(v) for v in data.get("volunteers", ())),
                    peers=int(data.get("peers", 0)), error=str(data.get("error", "")), at=float(data.get("at", 0)),
                    suspects={str(k): str(v) for k, v in dict(data.get("suspects") or {}).items()},
                    kept={str(k): float(v) for k, v in dict(data.get("kept") or {}).items()},
                    checks={str(k): dict(v) for k, v in dict(data.get("checks") or {}).items()},
                    weights={str(k): float(v) for k, v in dict(data.get("weights") or {}).items()},
                ))
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring an unreadable line of %s", path)

    def add(self, outcome: Any, volunteers: Sequence[str], suspects: dict[str, str] | None = None,
            kept: dict[str, float] | None = None, checks: dict[str, dict[str, Any]] | None = None,
            weights: dict[str, float] | None = None) -> RoundEntry:
        suspects = dict(suspects or {})
        refused = {v for v, why in suspects.items() if why.startswith("refused")}
        entry = RoundEntry(epoch=int(outcome.epoch), volunteers=tuple(v for v in volunteers if v not in refused),
                           peers=len(outcome.peers), error=str(outcome.error), at=float(outcome.at),
                           suspects=suspects, kept=dict(kept or {}), checks=dict(checks or {}),
                           weights=dict(weights or {}))
        for volunteer, why in suspects.items():
            logger.warning("epoch %d: volunteer %s is suspect: %s", entry.epoch, volunteer, why)
        self.entries.append(entry)
        try:
            with self.path.open("a") as out:
                out.write(json.dumps(asdict(entry)) + "\n")
        except OSError as exc:
            logger.warning("could not record the round of epoch %d: %s", entry.epoch, exc)
        if entry.error or not entry.volunteers:
            logger.warning("epoch %d: the averaging peer averaged with no volunteer: %s", entry.epoch,
                           entry.error or "no volunteer's update came in")
        else:
            logger.info("epoch %d: averaged %d volunteer(s)", entry.epoch, len(entry.volunteers))
        return entry

    def standing(self, others: Sequence[RoundBook] = ()) -> tuple[set[str], dict[str, str]]:
        """From the validation checks so far (this book's and ``others``': the rounds as a job's
        further averaging peers reduced them, each checking its own slice of the updates), counting
        a failed check one up and a passed one one down (never below 0; inconclusive checks do not
        count), in the order of the rounds: the volunteers whose count is above 0 (their credit is
        held until it is back to 0) and those whose count reached ``FAILS_TO_DROP``, with why (they
        are dropped from the job's rounds, and their credit refused)."""
        failed, dropped, _ = self._count_checks(others)
        held = {v for v, n in failed.items() if n > 0 and v not in dropped}
        return held, dropped

    def verified(self, others: Sequence[RoundBook] = ()) -> set[str]:
        """The volunteers one of whose updates (or slices of one) passed a validation check."""
        return self._count_checks(others)[2]

    def _count_checks(self, others: Sequence[RoundBook]) -> tuple[dict[str, int], dict[str, str], set[str]]:
        from essaim.swarm.optimizer import FAILS_TO_DROP

        failed: dict[str, int] = {}
        dropped: dict[str, str] = {}
        verified: set[str] = set()
        entries = sorted([*self.entries, *(e for book in others for e in book.entries)], key=lambda e: (e.epoch, e.at))
        for entry in entries:
            for volunteer, check in entry.checks.items():
                passed = bool(check.get("passed"))
                if passed:
                    verified.add(volunteer)
                if check.get("inconclusive") or volunteer in dropped:
                    continue  # neither passed nor failed; or refused for good already
                if passed:  # failed checks less passed ones, never below 0 (as the averaging peer counts)
                    failed[volunteer] = max(0, failed.get(volunteer, 0) - 1)
                else:
                    failed[volunteer] = failed.get(volunteer, 0) + 1
                    if failed[volunteer] >= FAILS_TO_DROP:
                        dropped[volunteer] = str(check.get("why", ""))
        return failed, dropped, verified

    def carried(self) -> dict[str, float] | None:
        """Volunteer id -> the samples its updates carried into the job's averages, over the rounds
        that averaged (what the ledger may grant it, with an epoch in flight); None where no round
        says so (mean aggregation, or no round yet)."""
        if not any(e.weights for e in self.entries):
            return None
        out: dict[str, float] = {}
        for entry in self.entries:
            if entry.error:
                continue  # the average was not applied: nothing it carried went into the model
            for volunteer, weight in entry.weights.items():
                out[volunteer] = out.get(volunteer, 0.0) + weight
        return out

    def unobserved(self, swarm_epoch: int) -> int:
        """How many of the epochs before ``swarm_epoch`` have no round here: the averaging peer was
        not there to take part (its runner was down while the volunteers trained on)."""
        return max(0, swarm_epoch - len({e.epoch for e in self.entries if e.epoch < swarm_epoch}))

    @property
    def last(self) -> RoundEntry | None:
        return self.entries[-1] if self.entries else None

    def averaged_volunteers(self) -> set[str] | None:
        """The volunteers of the last round (none when it failed); None before the first round."""
        last = self.last
        if last is None:
            return None
        return set() if last.error else set(last.volunteers)

    def describe_last(self) -> str:
        last = self.last
        if last is None:
            return ""
        if last.error:
            return f"epoch {last.epoch}: averaged with nobody: {last.error}"
        n = len(last.volunteers)
        if n < 2:
            return (f"epoch {last.epoch}: averaged with nobody: only {n} volunteer's update came in; the others "
                    "could not reach the coordinator's averaging peer in time")
        return f"epoch {last.epoch}: averaged {n} volunteers"

    def why_not_averaged(self, target_epochs: int) -> str | None:
        """None when the swarm's final state is an average of its volunteers' work, else why not."""
        seen = {v for e in self.entries for v in e.volunteers}
        averaged = sum(1 for e in self.entries if e.averaged)
        if len(seen) >= 2 and averaged == 0:
            return (f"the volunteers never averaged together (0 of {len(self.entries)} rounds): each trained "
                    "alone, so there is no swarm model to publish; check that volunteers can reach the "
                    "coordinator's averaging peer (`essaim status` shows their reachability)")
        final = [e for e in self.entries if e.epoch == target_epochs - 1]
        if final and not any(e.volunteers and not e.error for e in final):
            why = final[-1].error or "no volunteer's update came in"
            return (f"the round of the last epoch ({target_epochs - 1}) averaged with nobody ({why}), so the "
                    "coordinator does not hold the swarm's final state; resubmit the job to train again")
        return None


def averager_books(job_dir: Path) -> list[RoundBook]:
    """The rounds as each of the job's further averaging peers reduced them (its own verdicts and
    checks, of its slice of the updates), read from their directories."""
    root = job_dir / AVERAGERS_DIR
    if not root.is_dir():
        return []
    return [RoundBook(d / ROUNDS_FILE) for d in sorted(root.iterdir()) if (d / ROUNDS_FILE).is_file()]
