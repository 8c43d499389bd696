"""The NAT lab itself: reachability through the NAT, no way in from outside, the uplink cap, cleanup.

Every check runs real Python sockets inside the lab's namespaces; the ``netlab`` fixture (conftest.py)
closes the lab when a test ends, which kills whatever these tests started in it.
"""

from __future__ import annotations

import queue
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

# A TCP server on an ephemeral port. Modes: "hello" answers b"hi"; "sink" reads to EOF then answers
# b"k"; "source" sends SIZE bytes and closes. Prints "port P" once listening, "peer IP" per connection.
SERVER = r"""
import socket, sys
mode, size = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.bind(("0.0.0.0", 0))
srv.listen(16)
print("port", srv.getsockname()[1], flush=True)
while True:
    conn, peer = srv.accept()
    print("peer", peer[0], flush=True)
    with conn:
        if mode == "hello":
            conn.sendall(b"hi")
        elif mode == "sink":
            while conn.recv(1 << 16):
                pass
            conn.sendall(b"k")
        else:
            conn.sendall(b"x" * size)
"""

# A client: connects to HOST PORT within TIMEOUT seconds, then (MODE) says hello, sends SIZE bytes or
# receives them. Prints "<local ip> <seconds from connect to the last byte>"; fails if it can't connect.
CLIENT = r"""
import socket, sys, time
host, port, mode, size, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
s = socket.create_connection((host, port), timeout=timeout)
s.settimeout(30)
start = time.monotonic()
if mode == "hello":
    assert s.recv(2) == b"hi"
elif mode == "send":
    s.sendall(b"x" * size)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"k"
else:
    got = 0
    while chunk := s.recv(1 << 16):
        got += len(chunk)
    assert got == size, got
print(s.getsockname()[0], time.monotonic() - start)
"""

SIZE = 5 * 1024 * 1024


class Server:
    """A SERVER process in ``host``; ``peers()`` lists the addresses it has accepted so far."""

    def __init__(self, host: Any, mode: str = "hello", size: int = 0) -> None:
        self.proc = host.popen([sys.executable, "-c", SERVER, mode, str(size)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        first = self.lines.get(timeout=15)
        assert first.startswith("port "), first
        self.port = int(first.split()[1])

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def peers(self) -> list[str]:
        out = []
        while not self.lines.empty():
            line = self.lines.get_nowait()
            assert line.startswith("peer "), line
            out.append(line.split()[1])
        return out


def client(host: Any, address: str, port: int, mode: str = "hello", size: int = 0,
           timeout: float = 5.0) -> subprocess.Popen[str]:
    return host.popen([sys.executable, "-c", CLIENT, address, str(port), mode, str(size), str(timeout)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=40)
    return proc.returncode, out, err


def transfer_mbit(home: Any, public: Any, mode: str) -> float:
    server = Server(public, "sink" if mode == "send" else "source", SIZE)
    rc, out, err = finish(client(home, public.address, server.port, mode, SIZE))
    assert rc == 0, err
    seconds = float(out.split()[1])
    return SIZE * 8 / 1e6 / seconds


def test_public_host_is_reachable_from_homes_through_the_nat(netlab: Any) -> None:
    public = netlab.add_host("coord")
    homes = [netlab.add_home("a"), netlab.add_home("b")]
    assert public.public_address == public.address
    server = Server(public)
    for home in homes:
        assert home.address.startswith("192.168.") and home.public_address != home.address
        rc, out, err = finish(client(home, public.address, server.port))
        assert rc == 0, err
        assert out.split()[0] == home.address  # the volunteer itself sees its private address...
    # ...and the public host sees each connection coming from that home's router WAN address
    assert server.peers() == [home.public_address for home in homes]
    assert len({home.public_address for home in homes}) == 2


def test_homes_are_not_reachable_from_outside(netlab: Any) -> None:
    public = netlab.add_host("coord")
    home_a, home_b = netlab.add_home("a"), netlab.add_home("b")
    assert home_a.router is not None
    server = Server(home_a)
    # control: the server does answer from its own LAN (the router's side of it)
    rc, _, err = finish(client(home_a.router, home_a.address, server.port))
    assert rc == 0, err
    lan_prefix = home_a.address.rsplit(".", 1)[0]
    assert server.peers() == [f"{lan_prefix}.1"]
    # an attacker on the internet's wire that routes 192.168.N.0/24 to router A: the packets reach the
    # router, which must drop them as new inbound connections
    public.run(["ip", "route", "add", f"{lan_prefix}.0/24", "via", home_a.public_address], check=True, capture_output=True)
    pairs = [(who, target) for who in (public, home_b) for target in (home_a.address, home_a.public_address)]
    attempts = [client(who, target, server.port, timeout=2.0) for who, target in pairs]
    for (who, target), proc in zip(pairs, attempts, strict=True):
        rc, out, err = finish(proc)
        assert rc != 0, f"{who.name} connected to {target} from outside the home: {out}"
        if who is public or target == home_a.public_address:
            assert "timed out" in err, err  # silently dropped by router A, as a real home router does
        else:
            assert "unreachable" in err, err  # router B has no route to another home's LAN
    assert server.peers() == []


def test_uplink_cap_limits_both_directions(netlab: Any) -> None:
    public = netlab.add_host("coord")
    capped = netlab.add_home("slow", uplink_mbit=20)
    free = netlab.add_home("fast")
    up, down = transfer_mbit(capped, public, "send"), transfer_mbit(capped, public, "recv")
    free_up = transfer_mbit(free, public, "send")
    # about 2 s for 5 MiB at 20 Mbit/s: clearly capped, yet not far below the cap
    assert 5 < up < 30, up
    assert 5 < down < 30, down
    assert free_up > 100, free_up


def test_close_removes_everything(netlab_module: ModuleType) -> None:
    links_before = set(_root_links())
    lab = netlab_module.NetLab()
    try:
        lab.add_host("coord")
        home = lab.add_home("a", uplink_mbit=20)
        sleeper = home.popen(["sleep", "300"])
        names = lab.namespaces()
        assert len(names) == 4 and set(names) <= set(_namespaces())
    finally:
        lab.close()
    assert sleeper.wait(timeout=10) == -9  # killed by close()
    assert not [ns for ns in _namespaces() if lab.token in ns]
    assert set(_root_links()) == links_before
    lab.close()  # idempotent


def test_failed_setup_leaves_nothing(netlab: Any) -> None:
    netlab.add_host("coord")
    before = netlab.namespaces()
    with pytest.raises(ValueError, match="uplink_mbit"):
        netlab.add_home("broken", uplink_mbit=-1)
    assert netlab.namespaces() == before
    assert not [ns for ns in _namespaces() if "broken" in ns and netlab.token in ns]
    with pytest.raises(ValueError, match="already used"):
        netlab.add_home("coord")
    assert netlab.namespaces() == before
    netlab.add_home("ok")  # the lab is still usable


def test_reap_leftovers_removes_only_dead_owners(netlab_module: ModuleType) -> None:
    family = f"t{secrets.token_hex(2)}"  # a family of our own: concurrent runs' reaps can't interfere
    lab = netlab_module.NetLab(family=family)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    orphan = f"{family}nl-{lab.token}-{pid_max + 1}-crashed"  # an owner pid that can't be alive
    try:
        lab.add_home("a")
        subprocess.run(["ip", "netns", "add", orphan], check=True, capture_output=True)
        assert netlab_module.reap_leftovers(family) == [orphan]
        assert orphan not in _namespaces()
        assert set(lab.namespaces()) <= set(_namespaces())  # a live owner's lab is left alone
    finally:
        subprocess.run(["ip", "netns", "delete", orphan], capture_output=True)
        lab.close()


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
