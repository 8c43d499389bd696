"""The training log a job's artifact carries: CSV that any tool reads back as it was written."""

from __future__ import annotations

import csv
import io

from essaim.coordinator.rounds import RoundEntry
from essaim.coordinator.training_log import rounds_csv, training_log_csv
from essaim.protocol.types import JobMetrics


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_progress_rows_are_in_time_order_with_unknown_values_left_empty() -> None:
    points = [
        (1_700_000_060.0, JobMetrics(epoch=1, samples=640, samples_per_second=10.5, loss=2.25, eval_metric=0.125,
                                     live_peers=3)),
        (1_700_000_000.0, JobMetrics(epoch=0, samples=0, loss=None)),  # no loss reported yet, no eval yet
        (1_700_000_090.0, JobMetrics(epoch=2, samples=1280, loss=float("nan"))),
    ]
    rows = _rows(training_log_csv(points, "exact match"))
    assert list(rows[0]) == ["time", "unix_time", "epoch", "samples", "samples_per_second", "loss",
                             "eval_exact_match", "peers_averaged"]
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["time"] == "2023-11-14T22:13:20Z" and rows[0]["loss"] == "" and rows[0]["eval_exact_match"] == ""
    assert (rows[1]["loss"], rows[1]["eval_exact_match"], rows[1]["samples_per_second"]) == ("2.25", "0.125", "10.5")
    assert rows[2]["loss"] == ""  # not a number: not a value


def test_rounds_rows_name_volunteers_and_suspects_and_survive_commas_and_quotes() -> None:
    entries = [
        RoundEntry(epoch=1, volunteers=("b", "a"), peers=3, at=20.0,
                   suspects={"m": 'refused: "excluded", for the rest of the job'}),
        RoundEntry(epoch=0, volunteers=(), peers=1, error="no volunteer's update came in", at=10.0),
    ]
    rows = _rows(rounds_csv(entries))
    assert [(r["epoch"], r["volunteers"], r["peers"]) for r in rows] == [("0", "0", "1"), ("1", "2", "3")]
    assert rows[0]["error"] == "no volunteer's update came in"
    assert rows[1]["volunteer_ids"] == "b;a"
    assert rows[1]["suspects"] == 'm: refused: "excluded", for the rest of the job'


def test_where_the_job_ended_is_a_last_row_unless_the_newest_point_says_it_already() -> None:
    last = JobMetrics(epoch=12, samples=58480, loss=0.9, eval_metric=0.97)
    points = [(10.0, JobMetrics(epoch=11, samples=50000, loss=0.95))]
    assert [r["epoch"] for r in _rows(training_log_csv(points, "m", final=(20.0, last)))] == ["11", "12"]
    points.append((19.0, JobMetrics(epoch=12, samples=58480, loss=0.9, eval_metric=0.97)))
    assert [r["epoch"] for r in _rows(training_log_csv(points, "m", final=(20.0, last)))] == ["11", "12"]
    assert _rows(training_log_csv([], "m", final=(20.0, last)))[0]["eval_m"] == "0.97"
