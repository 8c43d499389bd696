"""The address a coordinator behind a NAT or a load balancer hands out: ``--announce-host``.

The job runner listens where the coordinator does and announces the given host with the port it
really listens on (libp2p announces no port 0), and hands out only that address, so volunteers
never get an address they cannot use (the coordinator's loopback, say)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow
ANNOUNCED = "127.0.0.3"  # on Linux the whole 127/8 reaches this machine: a stand-in for a public address


@pytest.mark.timeout(300)
def test_the_runner_announces_the_given_host_with_its_real_port(
        harness: ModuleType, launch_coordinator: Any, tmp_path: Path) -> None:
    recipe = harness.make_job(tmp_path / "job", epochs=6, target_batch_size=512)

    def launcher(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
        return launch_coordinator(data_dir, "--host", "0.0.0.0", "--insecure", "--announce-host", ANNOUNCED, *args,
                                  env=env)

    swarm = harness.ServiceSwarm.start(launcher, tmp_path / "coord", recipe)
    try:
        alice = swarm.volunteer("alice")
        alice.register()
        peers = alice.assignment().initial_peers
        assert peers and all(p.startswith(f"/ip4/{ANNOUNCED}/tcp/") for p in peers), peers
        assert all(int(p.split("/")[4]) > 0 for p in peers), peers
        alice.start(client_mode="on")  # a NAT-ed volunteer: it reaches the job through that address only

        def rounds() -> list[dict[str, Any]]:
            path = swarm.job_dir / "rounds.jsonl"
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        # its updates reach the coordinator's averaging peer through the announced address
        harness.wait_until(lambda: any(r["volunteers"] == [alice.volunteer_id] and not r["error"]
                                       for r in rounds()), 240, "a round averaged through the announced address")
    finally:
        swarm.close()
