"""Real home-NAT topologies made of Linux network namespaces, for integration tests and benchmarks.

Needs root, ``ip`` (iproute2), ``iptables`` and ``tc``; :func:`available` says why not when it can't
run. Usage::

    with NetLab() as lab:
        coordinator = lab.add_host("coord")                # 10.R.0.x on the "internet"
        home = lab.add_home("alice", uplink_mbit=20)       # 192.168.N.2 behind a NAT router
        server = coordinator.popen([sys.executable, "-m", "http.server", "8000"])
        home.run(["curl", "-sf", f"http://{coordinator.address}:8000/"], check=True, timeout=10)
        print(home.public_address)                         # router's WAN address: what others see

Topology: the "internet" is a bridge in a namespace of its own (``esnl-<token>-<pid>-inet``), on
subnet 10.R.0.0/24 with R in 200..250 (11.R.0.0/24 with ``NetLab(public_internet=True)``: a router
hands out port mappings only on a public WAN address; the lab's namespaces route nowhere else). A host is a namespace with one veth on that bridge. A home is
a router namespace (WAN 10.R.0.y on the bridge, LAN 192.168.N.1/24) that masquerades the LAN out of
its WAN and drops new connections coming in from the WAN, and a volunteer namespace (192.168.N.2)
behind it. ``add_home(name, upnp=True)``'s router also runs miniupnpd (UPnP IGD and NAT-PMP, as a
home router with UPnP left on), whose mappings open ports through the NAT. Every lab namespace is named ``esnl-<token>-<owner pid>-<name>``, so
:func:`reap_leftovers` can remove what a crashed run left behind without touching a live lab's.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

FAMILY = "es"
PUBLIC_FIRST_OCTET = 11  # NetLab(public_internet=True): 11.R.0.0/24, no private nor reserved range
_NS_RE = r"^{family}nl-([0-9a-f]{{4}})-(\d+)-"


class NetLabError(RuntimeError):
    """A command that builds or tears down the lab failed."""


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetLabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr.strip()}")
    return proc


def _in(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", "netns", "exec", ns, *cmd], check=check)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_and_delete(ns: str) -> None:
    """SIGKILL every process inside ``ns``, then delete it (its veths go with it). Never raises."""
    for _ in range(50):
        pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _run(["ip", "netns", "delete", ns], check=False)


@dataclass
class Host:
    """One namespace of the lab: ``address`` on its own interface, ``public_address`` as others see it."""

    name: str
    address: str
    public_address: str
    router: Host | None = field(default=None, repr=False)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen([*self.prefix(), *argv], **kwargs)

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run([*self.prefix(), *argv], **kwargs)


def _used_second_octets(first: int = 10) -> set[int]:
    """Second octets of the ``first``.x networks the root namespace already routes or owns."""
    text = _run(["ip", "-4", "route"], check=False).stdout + _run(["ip", "-4", "-o", "addr"], check=False).stdout
    used: set[int] = set()
    for word in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?", text):
        net = ipaddress.ip_network(word, strict=False)
        if net.prefixlen == 0:
            continue
        for second in range(200, 251):
            if net.overlaps(ipaddress.ip_network(f"{first}.{second}.0.0/16")):
                used.add(second)
    return used


class NetLab:
    """A private "internet" with public hosts and NATed homes; ``close()`` removes all of it."""

    def __init__(self, family: str = FAMILY, *, public_internet: bool = False) -> None:
        self.token = secrets.token_hex(2)
        self._ns_prefix = f"{family}nl-{self.token}-{os.getpid()}-"
        first = PUBLIC_FIRST_OCTET if public_internet else 10
        free = sorted(set(range(200, 251)) - _used_second_octets(first))
        if not free:
            raise NetLabError(f"no free {first}.R.0.0/24 subnet with R in 200..250")
        self.public_internet = public_internet
        self.subnet = f"{first}.{random.choice(free)}.0"
        self._namespaces: list[str] = []
        self._next_public = 10
        self._next_home = 10
        self._ports = itertools.count()
        self._closed = False
        self._files: str | None = None  # miniupnpd's configuration and logs, when a home has UPnP
        self._daemons: list[subprocess.Popen[bytes]] = []
        self.root_address = ""  # set by attach_root
        self._root_link = ""
        self.inet = self._ns_prefix + "inet"
        try:
            self._add_ns(self.inet)
            _in(self.inet, "ip", "link", "add", "br0", "type", "bridge")
            _in(self.inet, "ip", "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    # -- building blocks -------------------------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)  # only once made: a clashing name must not delete the other one
        _in(ns, "ip", "link", "set", "lo", "up")

    def _public_ip(self) -> str:
        if self._next_public > 254:
            raise NetLabError("the lab's internet subnet is full")
        self._next_public += 1
        return f"{self.subnet}.{self._next_public - 1}"

    def _plug(self, ns: str, ifname: str, address: str) -> None:
        """Attach ``ns`` to the internet bridge through a veth named ``ifname`` inside ``ns``."""
        port = f"p{next(self._ports)}"  # never reused: a deleted namespace's veths go away lazily
        _in(self.inet, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
        _in(self.inet, "ip", "link", "set", port, "master", "br0", "up")
        _in(ns, "ip", "addr", "add", f"{address}/24", "dev", ifname)
        _in(ns, "ip", "link", "set", ifname, "up")

    def _building(self, *names: str) -> int:
        if self._closed:
            raise NetLabError("this NetLab is closed")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or self._ns_prefix + name in self._namespaces:
                raise ValueError(f"bad or already used name in this lab: {name!r}")
        return len(self._namespaces)

    def _undo(self, mark: int) -> None:
        for ns in reversed(self._namespaces[mark:]):
            _kill_and_delete(ns)
        del self._namespaces[mark:]

    # -- public API ------------------------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        """A namespace with a public address on the internet bridge (e.g. the coordinator)."""
        mark = self._building(name)
        ns = self._ns_prefix + name
        try:
            address = self._public_ip()
            self._add_ns(ns)
            self._plug(ns, "eth0", address)
        except BaseException:
            self._undo(mark)
            raise
        return Host(name=ns, address=address, public_address=address)

    def add_address(self, host: Host) -> str:
        """One more address on the internet for ``host`` (made by :meth:`add_host`), on its interface."""
        address = self._public_ip()
        _in(host.name, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        return address

    def add_home(self, name: str, *, uplink_mbit: float | None = None, upnp: bool = False,
                 filtering: str = "connection") -> Host:
        """A volunteer namespace behind its own NAT router; ``uplink_mbit`` caps both directions;
        ``upnp``: the router maps ports on request (miniupnpd; needs ``public_internet``).
        ``filtering``: what the router lets in. "connection" (most home routers): only the replies
        of connections the home opened. "address" (an address-restricted cone NAT): also a new
        connection from any address the home has sent to in the last 10 minutes, to the port it
        came to (the home's own, which the masquerade keeps when it is free)."""
        if filtering not in ("connection", "address"):
            raise ValueError(f"filtering is 'connection' or 'address', not {filtering!r}")
        if upnp:
            if not self.public_internet:
                raise ValueError("a UPnP router needs NetLab(public_internet=True): miniupnpd maps no port on a "
                                 "private WAN address")
            if shutil.which("miniupnpd") is None or shutil.which("iptables-legacy") is None:
                raise NetLabError("a UPnP router needs miniupnpd and iptables-legacy (Debian: miniupnpd-iptables)")
        mark = self._building(name, name + "-r")
        router_ns, ns = self._ns_prefix + name + "-r", self._ns_prefix + name
        n = self._next_home
        self._next_home += 1
        lan = f"192.168.{n}"
        try:
            wan_ip = self._public_ip()
            self._add_ns(router_ns)
            self._plug(router_ns, "wan", wan_ip)
            self._add_ns(ns)
            _in(router_ns, "ip", "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _in(router_ns, "ip", "addr", "add", f"{lan}.1/24", "dev", "lan")
            _in(router_ns, "ip", "link", "set", "lan", "up")
            _in(ns, "ip", "addr", "add", f"{lan}.2/24", "dev", "eth0")
            _in(ns, "ip", "link", "set", "eth0", "up")
            _in(ns, "ip", "route", "add", "default", "via", f"{lan}.1")
            _in(router_ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")  # sysctl, without procps
            # miniupnpd writes its rules with libiptc: the router's other rules in the same tables
            ipt = ("iptables-legacy" if upnp else "iptables", "-w", "5")
            _in(router_ns, *ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE")
            if upnp:  # miniupnpd's chains, before the rules that keep the outside out
                for table, chain, hook in (("nat", "MINIUPNPD", "PREROUTING"),
                                           ("nat", "MINIUPNPD-POSTROUTING", "POSTROUTING"),
                                           ("filter", "MINIUPNPD", "FORWARD")):
                    _in(router_ns, *ipt, "-t", table, "-N", chain)
                    where = ("-o" if hook == "POSTROUTING" else "-i")
                    _in(router_ns, *ipt, "-t", table, "-I", hook, where, "wan", "-j", chain)
            if filtering == "address":  # remember where the home sends; let those addresses in
                _in(router_ns, *ipt, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-m", "recent", "--name",
                    "contacted", "--rdest", "--set")
                _in(router_ns, *ipt, "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "tcp", "-m", "recent",
                    "--name", "contacted", "--rsource", "--rcheck", "--seconds", "600", "-j", "DNAT",
                    "--to-destination", f"{lan}.2")
                _in(router_ns, *ipt, "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "DNAT",
                    "-j", "ACCEPT")
            for chain in ("FORWARD", "INPUT"):
                _in(router_ns, *ipt, "-A", chain, "-i", "wan", "-m", "conntrack",
                    "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
                _in(router_ns, *ipt, "-A", chain, "-i", "wan", "-j", "DROP")
            if upnp:
                self._start_upnp(router_ns, lan)
            if uplink_mbit is not None:
                for dev in ("wan", "lan"):  # wan egress = upload, lan egress = download
                    self._shape(router_ns, dev, uplink_mbit)
        except BaseException:
            self._undo(mark)
            raise
        router = Host(name=router_ns, address=wan_ip, public_address=wan_ip)
        return Host(name=ns, address=f"{lan}.2", public_address=wan_ip, router=router)

    def _start_upnp(self, router_ns: str, lan: str) -> None:
        """miniupnpd on the router's LAN side, mapping ports to LAN hosts that ask (secure mode: to
        themselves only), as a home router with UPnP IGD and NAT-PMP on. Goes with the namespace."""
        if self._files is None:
            self._files = tempfile.mkdtemp(prefix=self._ns_prefix)
        conf = os.path.join(self._files, f"{router_ns}.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                "ext_ifname=wan", "listening_ip=lan", "enable_natpmp=yes", "enable_upnp=yes", "secure_mode=yes",
                "system_uptime=yes", f"uuid={uuid.uuid4()}", f"allow 1024-65535 {lan}.0/24 1024-65535",
                "deny 0-65535 0.0.0.0/0 0-65535", "",
            ]))
        log = open(os.path.join(self._files, f"{router_ns}.log"), "wb")  # noqa: SIM115 (the daemon keeps it)
        with log:
            self._daemons.append(subprocess.Popen(["ip", "netns", "exec", router_ns, "miniupnpd", "-d", "-f", conf,
                              "-P", os.path.join(self._files, f"{router_ns}.pid")],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 10
        while "Listening for NAT-PMP" not in _read(log.name):
            if time.monotonic() > deadline:
                raise NetLabError(f"miniupnpd did not start in {router_ns}: {_read(log.name)[-500:]}")
            time.sleep(0.05)

    @staticmethod
    def _shape(ns: str, dev: str, mbit: float) -> None:
        if mbit <= 0:
            raise ValueError(f"uplink_mbit must be positive, not {mbit}")
        rate_bytes = mbit * 1e6 / 8
        burst = max(int(rate_bytes * 0.01), 16 * 1024)  # 10 ms of traffic, at least a few packets
        _in(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(mbit * 1000)}kbit",
            "burst", str(burst), "latency", "100ms")

    def attach_root(self) -> str:
        """Give this machine's own namespace (the test process) an address on the internet, so it
        can talk to the lab's public hosts as any client on the internet would; returns the address.
        The link lives in the internet namespace's bridge and goes with it on ``close()``."""
        if self._closed:
            raise NetLabError("this NetLab is closed")
        if self.root_address:
            return self.root_address
        name = f"{FAMILY}{self.token}{os.getpid() % 10000:04d}"[:15]
        address = self._public_ip()
        port = f"p{next(self._ports)}"
        _in(self.inet, "ip", "link", "add", port, "type", "veth", "peer", "name", name, "netns", "1")
        try:
            _in(self.inet, "ip", "link", "set", port, "master", "br0", "up")
            _run(["ip", "addr", "add", f"{address}/24", "dev", name])
            _run(["ip", "link", "set", name, "up"])
        except BaseException:
            _in(self.inet, "ip", "link", "del", port, check=False)
            raise
        self.root_address, self._root_link = address, name
        return address

    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    def close(self) -> None:
        """Kill every process in the lab's namespaces and delete them. Idempotent, never raises."""
        self._closed = True
        if self._root_link:
            _run(["ip", "link", "del", self._root_link], check=False)
            self._root_link = ""
        mine = [ns for ns in _namespaces() if ns.startswith(self._ns_prefix)]
        for ns in dict.fromkeys([*reversed(self._namespaces), *mine]):
            if ns != self.inet:
                _kill_and_delete(ns)
        _kill_and_delete(self.inet)  # the bridge goes last: reap_leftovers relies on that order
        self._namespaces.clear()
        for daemon in self._daemons:  # killed with their namespace: reaped here
            with contextlib.suppress(Exception):
                daemon.kill()
                daemon.wait(5)
        self._daemons.clear()
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)
            self._files = None

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def available() -> str | None:
    """None when labs can be built here, else why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "iptables", "tc") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    ns = f"{FAMILY}nl-{secrets.token_hex(2)}-{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", ns])
        _in(ns, "ip", "link", "set", "lo", "up")
        _in(ns, "ip", "link", "add", "br0", "type", "bridge")
        _in(ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "MASQUERADE")
        _in(ns, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT")
        _in(ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "20mbit", "burst", "32kb",
            "latency", "50ms")
    except (NetLabError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot build a network namespace lab here: {exc}"
    finally:
        _kill_and_delete(ns)
    return None


def reap_leftovers(prefix_family: str = FAMILY) -> list[str]:
    """Delete the namespaces of labs whose owner process is gone; returns the names deleted.

    Lab namespaces are ``<family>nl-<token>-<owner pid>-<name>``; a live owner's labs are left alone.
    """
    pattern = re.compile(_NS_RE.format(family=re.escape(prefix_family)))
    dead = []
    for ns in _namespaces():
        match = pattern.match(ns)
        if match and not _alive(int(match.group(2))):
            dead.append(ns)
    for ns in sorted(dead, key=lambda name: name.endswith("-inet")):
        _kill_and_delete(ns)
    return dead
