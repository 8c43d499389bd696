"""A volunteer's reachability check that got no answer is asked again, not taken as a guess."""

from __future__ import annotations

from typing import Any

import pytest
from essaim.swarm import reachability
from essaim.swarm.reachability import Reachability, check_reachability


def _answers(monkeypatch: pytest.MonkeyPatch, *answers: Reachability | Exception) -> list[int]:
    asked = [0]

    async def ask(_peers: Any, _maddrs: Any, _timeout: float) -> Reachability:
        answer = answers[min(asked[0], len(answers) - 1)]
        asked[0] += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(reachability, "_ask", ask)
    monkeypatch.setattr(reachability, "RETRY_PAUSE_S", 0.0)
    return asked


def test_a_check_without_an_answer_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _answers(monkeypatch, Reachability(None, reason="the check failed: TimeoutError"),
                     Reachability(False, observed="10.0.0.2"))
    seen = check_reachability(["/ip4/10.0.0.1/tcp/1/p2p/x"], host_maddrs=["/ip4/0.0.0.0/tcp/2"])
    assert (seen.reachable, seen.observed, asked[0]) == (False, "10.0.0.2", 2)


def test_an_answer_is_not_asked_again_and_no_answer_stays_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _answers(monkeypatch, Reachability(True, observed="10.0.0.2", address="/ip4/10.0.0.2/tcp/2"))
    assert check_reachability([], host_maddrs=[]).reachable is True and asked[0] == 1
    asked = _answers(monkeypatch, OSError("the daemon did not start"))
    seen = check_reachability([], host_maddrs=[], attempts=3)
    assert seen.reachable is None and "the daemon did not start" in seen.reason and asked[0] == 3
