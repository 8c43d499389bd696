"""A router that lets in any address its home has contacted must not pass for a public volunteer.

Such a router (an address-restricted cone NAT: the lab's ``add_home(filtering="address")``) lets
the coordinator dial a volunteer back on any port, since the volunteer's probe has just talked to
it, while every other volunteer stays out. A coordinator with a second address of its host
(``serve_reachability_checks(second_address=...)``, the coordinator's
``--reachability-second-address``) also connects from there and finds the volunteer out of reach.
The same volunteer checked by a coordinator without one is taken for reachable (this test's proof
that the lab's router filters as described, and the case the setting exists for), and a volunteer
on a public address stays reachable with it. Processes: ``upnp_peer.py`` in the lab's namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow
PEER = str(Path(__file__).with_name("upnp_peer.py"))


@pytest.fixture(scope="module")
def lab(netlab_module: ModuleType) -> Iterator[Any]:
    lab = netlab_module.NetLab()
    try:
        yield lab
    finally:
        lab.close()


def _coordinator(roles: ModuleType, lab: Any, name: str, record: Path, *,
                 second: bool) -> tuple[Any, subprocess.Popen[str]]:
    host = lab.add_host(name)
    args = [str(record)]
    if second:
        host.second = lab.add_address(host)
        args.append(host.second)
    proc = host.popen([sys.executable, PEER, "coordinator", *args], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        host.maddrs = roles._first_line(proc, 60)["maddrs"]
    except BaseException:
        roles._stop(proc)
        raise
    assert host.maddrs and all(f"/{host.address}/" in m for m in host.maddrs), host.maddrs
    return host, proc


@pytest.mark.timeout(300)
def test_a_router_that_filters_by_address_is_found_out_from_a_second_address(
        lab: Any, upnp_roles: ModuleType, tmp_path: Path) -> None:
    helpers = upnp_roles
    with_second, proc1 = _coordinator(helpers, lab, "coord2", tmp_path / "second.json", second=True)
    try:
        only_one, proc2 = _coordinator(helpers, lab, "coord1", tmp_path / "one.json", second=False)
        try:
            home = lab.add_home("restricted", filtering="address")
            # one address: the dial-back passes the router, which had just seen that address
            fooled = helpers._run(home, "check", *only_one.maddrs)
            assert fooled["reachable"] is True and fooled["observed"] == home.public_address, fooled
            # a second address: the router keeps it out, as it would keep out every other volunteer
            seen = helpers._run(home, "check", *with_second.maddrs)
            assert seen["reachable"] is False and seen["reachability"] == "nat", seen
            assert "filters by address" in seen["reason"] and with_second.second in seen["reason"], seen
            # a volunteer on a public address answers from anywhere
            public = lab.add_host("public")
            assert helpers._run(public, "check", *with_second.maddrs)["reachable"] is True
        finally:
            helpers._stop(proc2)
    finally:
        helpers._stop(proc1)
