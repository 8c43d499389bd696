"""Allowed training hours per weekday, with ranges that may cross midnight.

    week = Schedule.from_settings(values)            # values["schedule.mon"] == "09:00-17:00,22:00-06:00"
    week.allows(datetime(2024, 5, 6, 23, 0))         # True: Monday 22:00 -> Tuesday 06:00
    week.next_start(now)                             # when training may start again, or None (never)

A range "a-b" with a > b runs from a on its day to b on the next day, so "fri 22:00-06:00"
allows Saturday 03:00. "all" is the whole day, "none" (or "") nothing, "24:00" ends a day.
Used by :mod:`essaim.client.policy`; the strings come from the ``[schedule]`` config table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from essaim.client.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
Range = tuple[int, int]  # minutes from the day's midnight, start != end; start > end wraps


def parse_ranges(text: str, *, key: str = "schedule") -> tuple[Range, ...]:
    """``"09:00-12:00, 22:00-06:00"`` -> ((540, 720), (1320, 360)); ConfigError naming ``key`` if bad."""
    words = (text or "").strip().lower()
    if words in ("", "none", "never", "off"):
        return ()
    if words in ("all", "always", "any", "*"):
        return ((0, 1440),)
    out: list[Range] = []
    for part in words.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ConfigError(
                f"{key}: cannot read {part.strip()!r}; write 'all', 'none' or ranges like '09:00-17:00,22:00-06:00'"
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if m1 > 59 or m2 > 59 or start > 1440 or end > 1440 or start == end or start == 1440:
            raise ConfigError(f"{key}: {part.strip()!r} is not a range of times of day (00:00 to 24:00)")
        out.append((start, end))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Allowed ranges for each weekday (index 0 = Monday)."""

    days: tuple[tuple[Range, ...], ...] = tuple(((0, 1440),) for _ in DAYS)

    @classmethod
    def from_settings(cls, values: dict[str, Any]) -> Schedule:
        return cls(tuple(parse_ranges(values.get(f"schedule.{d}", "all"), key=f"schedule.{d}") for d in DAYS))

    @classmethod
    def parse(cls, **days: str) -> Schedule:
        """``Schedule.parse(mon="09:00-17:00", sat="none")``; days not named allow all hours."""
        return cls(tuple(parse_ranges(days.get(d, "all"), key=f"schedule.{d}") for d in DAYS))

    @property
    def always(self) -> bool:
        return all(ranges == ((0, 1440),) for ranges in self.days)

    def allows(self, when: datetime) -> bool:
        day, minute = when.weekday(), when.hour * 60 + when.minute + when.second / 60
        for start, end in self.days[day]:
            if start < end and start <= minute < end:
                return True
            if start > end and minute >= start:
                return True
        # ranges of the day before that wrap past midnight
        return any(start > end and minute < end for start, end in self.days[(day - 1) % 7])

    def next_start(self, when: datetime) -> datetime | None:
        """The first minute at or after ``when`` that the schedule allows, within a week; None if never."""
        if not any(self.days):
            return None
        base = when.replace(second=0, microsecond=0)
        candidates = []
        for offset in range(8):
            day = base.date() + timedelta(days=offset)
            for start, _end in self.days[day.weekday()]:
                moment = datetime.combine(day, datetime.min.time(), tzinfo=when.tzinfo) + timedelta(
                    minutes=start
                )
                if moment >= base:
                    candidates.append(moment)
        for moment in sorted(candidates):
            if self.allows(moment):
                return moment
        return None


def describe(moment: datetime, now: datetime) -> str:
    """``"14:30"`` today, ``"Tue 18:00"`` within the week."""
    if moment.date() == now.date():
        return moment.strftime("%H:%M")
    return f"{DAYS[moment.weekday()].capitalize()} {moment.strftime('%H:%M')}"
