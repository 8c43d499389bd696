"""A job's training log, as files a researcher's tools read: CSV in the artifact, beside the weights.

    training_log.csv   the job's progress as the runner recorded it (the dashboard's curves): time,
                       epoch, samples so far, samples/s, training loss, the eval metric, peers averaged
    rounds.csv         one row per averaging round of the job's averaging peers (rounds.jsonl):
                       epoch, time, volunteers averaged, peers in the group, error, suspects named

Times are UTC (ISO 8601) and unix seconds; an empty cell is a value not known then (no loss reported
yet, no evaluation yet). pandas: ``pd.read_csv("training_log.csv", parse_dates=["time"])``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from essaim.coordinator.rounds import RoundEntry
from essaim.protocol.types import JobMetrics

TRAINING_LOG = "training_log.csv"
ROUNDS_LOG = "rounds.csv"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def training_log_csv(points: Iterable[tuple[float, JobMetrics]], metric: str,
                     final: tuple[float, JobMetrics] | None = None) -> str:
    """The progress points, oldest first; ``metric`` names the eval column (``eval_exact_match``);
    ``final``, where the job ended, is a last row unless the newest point already says as much."""
    points = sorted(points, key=lambda p: p[0])
    if final is not None and (not points or _differs(points[-1][1], final[1])):
        points.append(final)
    column = "eval_" + ("".join(c if c.isalnum() else "_" for c in metric) or "metric")
    return _csv(
        ["time", "unix_time", "epoch", "samples", "samples_per_second", "loss", column, "peers_averaged"],
        ([_when(at), f"{at:.3f}", m.epoch, m.samples, _number(m.samples_per_second), _number(m.loss),
          _number(m.eval_metric) if m.eval_metric else "", m.live_peers]
         for at, m in points),
    )


def _differs(a: JobMetrics, b: JobMetrics) -> bool:
    return (a.epoch, a.samples, a.loss, a.eval_metric) != (b.epoch, b.samples, b.loss, b.eval_metric)


def rounds_csv(entries: Iterable[RoundEntry]) -> str:
    """The averaging rounds, by time; volunteers and suspects are volunteer ids, ``;``-separated."""
    return _csv(
        ["time", "unix_time", "epoch", "volunteers", "peers", "error", "volunteer_ids", "suspects"],
        ([_when(e.at), f"{e.at:.3f}", e.epoch, len(e.volunteers), e.peers, e.error, ";".join(e.volunteers),
          ";".join(f"{v}: {why}" for v, why in sorted(e.suspects.items()))]
         for e in sorted(entries, key=lambda e: e.at)),
    )
