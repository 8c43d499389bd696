"""Volunteers behind home NATs average together through the coordinator's averaging peer.

The topology is real (``netlab.py``): the coordinator on a public host of a private "internet",
three volunteers each behind its own router that masquerades their connections and drops every
connection coming in. The volunteers ask the coordinator to dial them back, learn that nobody can,
join the swarm in client mode, and the demo job must train as it does on loopback: every round
averages all three volunteers (through the coordinator's averaging peer, the one peer that accepts
connections), the job completes, and its held-out exact match rises as on loopback.

``ESSAIM_TEST_NAT_UPNP=carol`` (names, comma-separated) puts those volunteers behind routers that map
ports on request (miniupnpd, on a lab internet of public addresses): they learn that they can be
dialed through the mapping and join as full peers among the NAT-ed ones, and the same rounds and
learning are asked of that mixed swarm. ``ESSAIM_TEST_NAT_AVERAGING_PEERS=2`` runs the job with two
averaging peers on the coordinator's host (``training.averaging_peers``): every round is reduced by
both, and the same rounds and learning are asked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow
EPOCHS = 12  # the demo's job: 12 epochs of 4,800 samples, about 100 local steps per volunteer each
TARGET_BATCH = 4800
NAMES = ("alice", "bob", "carol")
UPNP = {name for name in os.environ.get("ESSAIM_TEST_NAT_UPNP", "").split(",") if name}
AVERAGING_PEERS = int(os.environ.get("ESSAIM_TEST_NAT_AVERAGING_PEERS", "0"))  # 0: the recipe's default
# held-out exact match after the demo's 12 epochs, three one-thread volunteers on this 2-core
# machine: 0.73 on loopback as full peers, 0.71-0.80 on loopback in client mode; here 0.795 and
# 0.81, and 0.89 beside two busy processes, since rounds are tagged with their epoch (before: 0.445-
# 0.735 here, 0.285-0.375 beside busy processes, 0.09-0.19 on a loaded CI machine, where volunteers
# a round late joined the next epoch's group and stalled it). The rounds, not this figure, say
# whether the swarm averaged; this one says that it learned: 0.0 before.
LEARNED = 0.25
# shares of the rounds (after the first) that must hold all three, and at least two, volunteers:
# all of them in most runs here, but on this 2-core machine a volunteer whose epoch ends late now and
# then misses a group (all three in 10 of 11 rounds beside two busy processes, 7 and 6 of 11 in
# other runs; at least two in 10 or 11 of 11)
ALL_THREE = 0.5
TWO_OR_MORE = 0.8


@pytest.fixture(scope="module")
def nat_swarm(netlab_module: ModuleType, harness: ModuleType, module_launcher: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("nat-swarm")
    if UPNP and (shutil.which("miniupnpd") is None or shutil.which("iptables-legacy") is None):
        pytest.skip("a UPnP router needs miniupnpd and iptables-legacy (Debian package miniupnpd-iptables)")
    lab = netlab_module.NetLab(public_internet=bool(UPNP))  # miniupnpd maps no port on a private WAN address
    swarm = None
    try:
        lab.attach_root()  # the test talks to the coordinator as a client on the internet would
        coord = lab.add_host("coord")
        homes = {name: lab.add_home(name, upnp=name in UPNP) for name in NAMES}
        recipe = harness.make_job(root / "job", epochs=EPOCHS, target_batch_size=TARGET_BATCH, adapter="full",
                                  averaging="local", checkpoint_every_epochs=EPOCHS // 2, eval_size=200,
                                  matchmaking_time=2.5,
                                  **({"averaging_peers": AVERAGING_PEERS} if AVERAGING_PEERS else {}))

        def launcher(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
            return module_launcher(data_dir, "--host", "0.0.0.0", "--insecure", *args, env=env, prefix=coord.prefix(),
                                   public_host=coord.address)

        swarm = harness.ServiceSwarm.start(launcher, root / "coord", recipe)
        swarm.homes, swarm.coord_address = homes, coord.address
        for name, home in homes.items():
            swarm.volunteer(name).start(client_mode="auto", host_maddrs=("/ip4/0.0.0.0/tcp/0",),
                                        prefix=tuple(home.prefix()))
        swarm.wait_ended(540)
        yield swarm
    finally:
        if swarm is not None:
            swarm.close()
        lab.close()


def _rounds(swarm: Any) -> list[dict[str, Any]]:
    path = swarm.job_dir / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(720)
def test_nated_volunteers_find_out_they_cannot_be_dialed(nat_swarm: Any) -> None:
    for v in nat_swarm.volunteers:
        started = v.wait_for(lambda e: e["event"] == "started", 30, "started")
        mapped = v.name in UPNP  # reachable through its router's mapping: a full peer
        assert started["reachability"] == ("upnp" if mapped else "nat"), (v.name, started)
        assert started["client_mode"] is not mapped
        # the coordinator saw the connection come from the volunteer's router, not from the volunteer
        assert started["observed"] == nat_swarm.homes[v.name].public_address, started
        # the coordinator hands out the address its averaging peer is reached at, not its loopback
        peers = json.loads((v.directory / "assignment.json").read_text())["initial_peers"]
        assert peers and all(m.startswith(f"/ip4/{nat_swarm.coord_address}/") for m in peers), peers


@pytest.mark.timeout(720)
def test_every_round_averages_all_the_nated_volunteers(nat_swarm: Any) -> None:
    job = nat_swarm.job()
    assert job.status.value == "completed", (job.status, job.status_reason, _rounds(nat_swarm))
    rounds = _rounds(nat_swarm)
    everyone = {v.volunteer_id for v in nat_swarm.volunteers}
    assert [r["epoch"] for r in rounds] == list(range(EPOCHS)), rounds
    # the rounds averaged NAT-ed volunteers together, through the coordinator's averaging peer
    together = [r for r in rounds[1:] if not r["error"] and len(r["volunteers"]) >= 2]
    assert len(together) >= TWO_OR_MORE * (len(rounds) - 1), rounds
    assert all(set(r["volunteers"]) <= everyone for r in rounds), rounds
    # and all three of them, but for the first (it may close before the last volunteer's model has
    # loaded) and, on a loaded machine, a rare round a late volunteer missed
    full = [r for r in rounds[1:] if set(r["volunteers"]) == everyone]
    assert len(full) >= ALL_THREE * (len(rounds) - 1), rounds
    for index in range(1, AVERAGING_PEERS):  # a further averaging peer reduced its share of those rounds
        path = nat_swarm.job_dir / "averagers" / str(index) / "rounds.jsonl"
        book = {r["epoch"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
        shared = [r for r in full if r["epoch"] in book and not book[r["epoch"]]["error"]
                  and set(book[r["epoch"]]["volunteers"]) == everyone]
        assert len(shared) >= ALL_THREE * (len(rounds) - 1), (index, rounds, book)
    for v in nat_swarm.volunteers:  # what each volunteer's app is told of its rounds
        last = v.wait_for(lambda e: e["event"] == "stopped", 60, "stopped")
        assert last["reason"] == "completed", last
        told = [e for e in v.events if e["event"] == "epoch" and e.get("round_epoch") is not None]
        assert told and sum(e["round_peers"] >= 1 and not e["round_error"] for e in told[1:]) >= \
            TWO_OR_MORE * (len(told) - 1), told
        assert sum(e["round_peers"] == len(NAMES) - 1 for e in told) >= ALL_THREE * (len(told) - 1), told


@pytest.mark.timeout(720)
def test_the_nated_swarm_learns_as_on_loopback(nat_swarm: Any) -> None:
    provenance = json.loads((nat_swarm.data_dir / "artifacts" / nat_swarm.job_id / "provenance.json").read_text())
    ev = provenance["eval"]
    assert ev["metric"] == "exact_match" and ev["before"] < 0.05, ev
    assert ev["after"] >= LEARNED, ev
    assert provenance["epochs"] == EPOCHS
