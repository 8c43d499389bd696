"""What the coordinator's settings hand to each job's runner process (its command line)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from essaim.coordinator import gateway
from essaim.coordinator.settings import CoordinatorSettings
from essaim.protocol.types import Job, JobStatus


def _command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> list[str]:
    started: list[list[str]] = []

    class Recorded:
        pid = 4242

        def __init__(self, cmd: list[str], **_: Any) -> None:
            started.append(cmd)

        def poll(self) -> None:
            return None

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    swarm = gateway.ProcessSwarmGateway(CoordinatorSettings(data_dir=tmp_path, **settings))
    swarm.start_job(Job(id="j" * 32, name="j", status=JobStatus.RUNNING, recipe_yaml=""))
    assert len(started) == 1
    return started[0]


def _value(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_the_runner_gets_the_averaging_peers_cap_and_the_second_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = _command(tmp_path, monkeypatch, max_averaging_peers=7, reachability_second_address="10.9.9.9")
    assert cmd[1:3] == ["-m", "essaim.coordinator.jobrunner"], cmd
    assert _value(cmd, "--max-averaging-peers") == "7"
    assert _value(cmd, "--reachability-second-address") == "10.9.9.9"


def test_no_second_address_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "--reachability-second-address" not in _command(tmp_path, monkeypatch)


def test_the_second_address_must_be_an_ip() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        CoordinatorSettings(reachability_second_address="coordinator.example.org")
