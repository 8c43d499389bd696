"""Can other peers dial this volunteer? Asked of the job's coordinator peer, not guessed.

    # the coordinator's job runner, once its DHT runs:
    serve_reachability_checks(dht, listen_host="0.0.0.0")
    # a volunteer's trainer, before it joins the DHT:
    seen = check_reachability(initial_peers, host_maddrs=["/ip4/0.0.0.0/tcp/41234"])
    seen.reachable      # True: others can dial it (full peer); False: behind a NAT (client mode)
    seen.observed       # "203.0.113.7": the address the coordinator saw the connection come from
    seen.via            # "upnp": reachable through a port its router mapped when asked

Like libp2p's AutoNAT, the answer comes from the other side: the volunteer starts a throwaway
libp2p peer listening where its DHT will listen, asks the coordinator's peer to dial it back, and
the coordinator tries, from a second libp2p peer of its own that holds no connection to it yet.
The coordinator only ever dials the address the request came from (with the ports the volunteer
names), at most once per ``MIN_CHECK_INTERVAL_S`` per caller and ``MAX_CONCURRENT_CHECKS`` at a
time, so the service cannot be used to make it connect anywhere else.

A dial-back from the coordinator's own address cannot tell every NAT apart. A router that keeps
out only the addresses its home has not contacted (address-restricted filtering, with the home's
port kept in its mapping) lets the coordinator in on any port, since the probe has just talked to
it, yet every other volunteer stays out. Given a second address of its host (``second_address``,
the coordinator's ``--reachability-second-address``: an extra IP that volunteers never see), the
coordinator also opens a plain TCP connection from there to the port that answered, and counts the
volunteer reachable only when a libp2p listener answers it too (multistream-select's header,
which the listener sends first). Without one, such a volunteer is taken for reachable and joins as
a full peer that other volunteers cannot dial.

A home router that takes port-mapping requests (UPnP IGD or NAT-PMP, as most do when the owner
left it on) lets a NAT-ed volunteer be a full peer. The probe asks its router for a mapping, as
the DHT's libp2p daemon does (``nat_port_map``); when the router cannot be dialed through on the
ports it listens on, and a mapping came (the daemon found the router and was given an outside
port, seen in its own addresses: about 5 s here), it asks the coordinator again to dial the mapped
ports, after the coordinator's per-caller interval. Reachable so, the DHT's daemon makes a mapping
of its own and announces it: the probe's mapping goes with the probe, and the router picks the
outside port.

Used by the trainer (:mod:`essaim.client.trainer`) to pick full or client mode, and by the job
runner (:mod:`essaim.coordinator.jobrunner`), which serves the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROTOCOL = "/essaim/reachability/1.0.0"
DIAL_TIMEOUT_S = 6.0
CHECK_TIMEOUT_S = 25.0
CHECK_ATTEMPTS = 2  # a volunteer asks again when a check got no answer
RETRY_PAUSE_S = 1.0
MIN_CHECK_INTERVAL_S = 10.0
MAX_CONCURRENT_CHECKS = 4
MAX_PORTS = 4
MAX_REQUEST_BYTES = 4096
MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"  # what a libp2p listener sends first on a new connection
MAPPED = "upnp"  # a request's "via": the ports named are ones the volunteer's router mapped
PORT_MAP_WAIT_S = 8.0  # after the probe starts, how long a check that found no way in waits for a router's mapping


@dataclass(frozen=True, slots=True)
class Reachability:
    """What the coordinator's peer saw: ``reachable`` None when it could not be asked."""

    reachable: bool | None
    observed: str = ""  # the IP the coordinator saw this peer's connection come from
    address: str = ""  # the multiaddr it could dial back, when reachable
    reason: str = ""
    via: str = ""  # "upnp": through a port the router mapped on request (UPnP IGD or NAT-PMP)

    @property
    def label(self) -> str:
        """public | upnp | nat | unknown: what `essaim status` and the dashboard show."""
        if self.reachable and self.via == MAPPED:
            return MAPPED
        return {True: "public", False: "nat", None: "unknown"}[self.reachable]

    def as_dict(self) -> dict[str, Any]:
        return {"reachability": self.label, "observed": self.observed, "address": self.address,
                "reason": self.reason}


# ---- the coordinator's side ----
def serve_reachability_checks(dht: Any, *, listen_host: str = "0.0.0.0", record: str | None = None,
                              second_address: str | None = None) -> None:
    """Answer reachability checks on ``dht``'s libp2p peer (runs in the DHT's own process). With
    ``record``, each answer is also kept in that JSON file, by peer id (:func:`read_checks`). With
    ``second_address`` (another IP of this host), a volunteer must also answer a connection from
    there (see the module docstring)."""
    if second_address:
        ipaddress.ip_address(second_address)  # ValueError for anything but an IP
    dht.run_coroutine(_ServeChecks(listen_host, record, second_address), return_future=True).result(30.0)


def read_checks(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """What :func:`serve_reachability_checks` recorded: peer id (base58) -> {"reachability":
    "public" | "nat" | "unknown", "observed": IP, "address": ..., "at": unix time}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """These environment variables set while the block runs (a libp2p daemon started in it reads them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _ServeChecks:
    """Picklable coroutine factory: hivemind runs it inside the DHT process."""

    def __init__(self, listen_host: str, record: str | None, second_address: str | None = None) -> None:
        self.listen_host = listen_host
        self.record = record
        self.second_address = second_address

    async def __call__(self, _dht: Any, node: Any) -> None:
        from essaim.swarm.dht import P2P_OPTIONS
        from hivemind.p2p import P2P

        # a DHT client, dialing from ports of its own: a volunteer's probe never learns of it nor
        # connects to it, so no router keeps a way in for its dial-backs (a probe that had dialed
        # the prober's port would be dialed back through its own NAT's entry for that connection)
        with _env(LIBP2P_TCP_REUSEPORT="false", IPFS_REUSEPORT="false"):
            prober = await P2P.create(host_maddrs=[f"/ip4/{self.listen_host}/tcp/0"], auto_nat=False,
                                      nat_port_map=False, conn_manager=False, dht_mode="client", **P2P_OPTIONS)
        checker = _Checker(prober, self.record, self.second_address)
        node.essaim_reachability = checker  # keeps the prober alive as long as the node
        await node.p2p.add_binary_stream_handler(PROTOCOL, checker.handle)


class _Checker:
    def __init__(self, prober: Any, record: str | None = None, second_address: str | None = None) -> None:
        self.prober = prober
        self.record = Path(record) if record else None
        self.second_address = second_address
        self.last_check: dict[bytes, float] = {}
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)

    async def handle(self, info: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await asyncio.wait_for(self._check(info, reader), CHECK_TIMEOUT_S)
        except (TimeoutError, ValueError, OSError) as exc:
            reply = {"reachable": None, "reason": f"the check failed: {type(exc).__name__}"}
        if reply.get("reachable") is not None or reply.get("observed"):
            self._keep(info.peer_id.to_base58(), reply)
        with contextlib.suppress(OSError, ConnectionError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    def _keep(self, peer: str, reply: dict[str, Any]) -> None:
        if self.record is None:
            return
        seen = read_checks(self.record)
        reachable = reply.get("reachable")
        label = Reachability(reachable if isinstance(reachable, bool) else None, via=str(reply.get("via", ""))).label
        seen[peer] = {"reachability": label, "observed": reply.get("observed", ""),
                      "address": reply.get("address", ""), "at": time.time()}
        if len(seen) > 10_000:  # keep the newest
            seen = dict(sorted(seen.items(), key=lambda kv: kv[1].get("at", 0))[-10_000:])
        tmp = self.record.with_name(self.record.name + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(seen))
            os.replace(tmp, self.record)

    async def _check(self, info: Any, reader: asyncio.StreamReader) -> dict[str, Any]:
        from hivemind.utils.multiaddr import Multiaddr

        line = await reader.readline()
        if len(line) > MAX_REQUEST_BYTES:
            return {"reachable": None, "reason": "request too large"}
        request = json.loads(line or b"{}")
        ports = [int(p) for p in request.get("ports", [])[:MAX_PORTS] if 0 < int(p) < 65536]
        via = MAPPED if request.get("via") == MAPPED else ""  # ports the caller's router mapped
        observed = _host_of(str(info.addr))
        peer = info.peer_id.to_bytes()
        now = time.monotonic()
        if now - self.last_check.get(peer, -MIN_CHECK_INTERVAL_S) < MIN_CHECK_INTERVAL_S:
            return {"reachable": None, "observed": observed, "reason": "asked too often; try again in a few seconds"}
        self.last_check[peer] = now
        if len(self.last_check) > 10_000:
            self.last_check = {k: v for k, v in self.last_check.items() if now - v < MIN_CHECK_INTERVAL_S}
        if observed is None or not ports:
            return {"reachable": None, "observed": observed or "", "reason": "no address or port to dial back"}
        family = "ip6" if ":" in observed else "ip4"
        async with self.slots:
            for port in ports:
                address = f"/{family}/{observed}/tcp/{port}"
                with contextlib.suppress(Exception):  # only a connection made now, to that address, counts
                    await self.prober._client.disconnect(info.peer_id)
                try:
                    await asyncio.wait_for(self.prober._client.connect(info.peer_id, [Multiaddr(address)]),
                                           DIAL_TIMEOUT_S)
                    peers = await asyncio.wait_for(self.prober._client.list_peers(), DIAL_TIMEOUT_S)
                except Exception:  # refused, timed out, wrong peer id: not reachable there
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        await self.prober._client.disconnect(info.peer_id)
                # libp2p reports success when it is connected to that peer by any way (another
                # address it learned, a relay): the connection must be to the address dialed
                if any(p.peer_id == info.peer_id and any(str(a) == address for a in p.addrs) for p in peers):
                    refused = (await _refused_from(self.second_address, observed, port)
                               if self.second_address and (":" in self.second_address) == (family == "ip6") else None)
                    if refused is not None:
                        return {"reachable": False, "observed": observed,
                                "reason": f"port {port} answered this coordinator but not a connection from an "
                                          f"address it had not contacted ({refused}): its router filters by "
                                          "address, and other volunteers could not dial it"}
                    return {"reachable": True, "observed": observed, "address": address, **({"via": via} if via else {})}
        return {"reachable": False, "observed": observed,
                "reason": f"a dial back to {observed} on port(s) {', '.join(map(str, ports))} failed"}


async def _refused_from(source: str, host: str, port: int) -> str | None:
    """None when a libp2p listener at ``host``:``port`` answers a TCP connection made from the
    address ``source``; otherwise why not."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)),
                                                DIAL_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return f"no connection from {source}: {type(exc).__name__}"
    try:
        header = await asyncio.wait_for(reader.readexactly(len(MULTISTREAM_HEADER)), DIAL_TIMEOUT_S)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"no libp2p answer from {source}: {type(exc).__name__}"
    finally:
        writer.close()
    return None if header == MULTISTREAM_HEADER else f"something else than libp2p answered {source}"


def _host_of(maddr: str) -> str | None:
    parts = maddr.split("/")
    for proto in ("ip4", "ip6"):
        if proto in parts and parts.index(proto) + 1 < len(parts):
            return parts[parts.index(proto) + 1]
    return None


# ---- the volunteer's side ----
def free_port(host: str = "0.0.0.0") -> int:
    """A TCP port free on ``host`` right now (for a probe and then the DHT, one after the other)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pin_ports(host_maddrs: Sequence[str]) -> list[str]:
    """``host_maddrs`` with each ``/tcp/0`` replaced by a port free now, so that the probe and the
    DHT listen on the same port (a router's port forward names one port)."""
    pinned = []
    for maddr in host_maddrs:
        parts = maddr.split("/")
        if "tcp" in parts and parts[parts.index("tcp") + 1] == "0":
            host = _host_of(maddr) or "0.0.0.0"
            parts[parts.index("tcp") + 1] = str(free_port(host if ":" not in host else "0.0.0.0"))
        pinned.append("/".join(parts))
    return pinned


def check_reachability(initial_peers: Sequence[str], *, host_maddrs: Sequence[str],
                       timeout: float = CHECK_TIMEOUT_S, attempts: int = CHECK_ATTEMPTS) -> Reachability:
    """Ask the first initial peer that answers to dial this machine back on ``host_maddrs``' ports.
    A check that got no answer (the coordinator's peer was busy, a dial timed out on a loaded
    machine) is asked again, up to ``attempts`` times in all: "unknown" leaves the volunteer to
    a guess, and a full peer guessed wrong behind a NAT never averages."""
    seen = Reachability(None, reason="not asked")
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(RETRY_PAUSE_S)
        try:
            # a first check, a wait for the router's mapping and the coordinator's interval, a second check
            seen = asyncio.run(asyncio.wait_for(_ask(list(initial_peers), list(host_maddrs), timeout),
                                                2 * timeout + MIN_CHECK_INTERVAL_S + 10))
        except Exception as exc:  # hivemind and the daemon raise many kinds: the answer is "unknown"
            seen = Reachability(None, reason=f"could not ask the coordinator: {type(exc).__name__}: {exc}"[:300])
        if seen.reachable is not None:
            break
        logger.info("reachability check %d of %d got no answer: %s", attempt + 1, attempts, seen.reason)
    return seen


async def _ask(initial_peers: list[str], host_maddrs: list[str], timeout: float) -> Reachability:
    from essaim.swarm.dht import P2P_OPTIONS
    from hivemind.p2p import P2P

    ports = sorted({int(m.split("/")[m.split("/").index("tcp") + 1]) for m in host_maddrs if "/tcp/" in m})
    # nat_port_map: the probe asks the router for a mapping, as the DHT's daemon will
    probe = await P2P.create(host_maddrs=host_maddrs, auto_nat=False, nat_port_map=True, dht_mode="client",
                             **P2P_OPTIONS)
    started = time.monotonic()
    try:
        seen, answered, asked = await _request(probe, initial_peers, ports)
        if seen.reachable is not False or answered is None:
            return seen
        mapped = await _mapped_ports(probe, deadline=started + PORT_MAP_WAIT_S)
        if not mapped:
            return seen
        logger.info("reachability: the router mapped port(s) %s; asking the coordinator to dial them",
                    ", ".join(map(str, mapped)))
        await asyncio.sleep(max(0.0, asked + MIN_CHECK_INTERVAL_S + 0.5 - time.monotonic()))  # the coordinator's interval
        try:
            again, _, _ = await asyncio.wait_for(_request(probe, [answered], mapped, via=MAPPED), timeout)
        except TimeoutError:
            again = Reachability(None)
        if again.reachable:
            return Reachability(True, observed=again.observed, address=again.address, via=MAPPED)
        why = again.reason or "no answer"
        return Reachability(False, observed=seen.observed, reason=f"{seen.reason}; through the router's mapping of "
                                                                  f"port(s) {', '.join(map(str, mapped))}: {why}"[:300])
    finally:
        with contextlib.suppress(Exception):
            await probe.shutdown()


async def _request(probe: Any, initial_peers: list[str], ports: list[int],
                   via: str = "") -> tuple[Reachability, str | None, float]:
    """Ask the first initial peer that answers to dial ``probe`` back on ``ports``: the answer, the
    initial peer that gave it (None when none did) and when it was asked (monotonic: the peer
    counts its interval between two checks of one caller from about then)."""
    from hivemind.p2p import PeerID
    from hivemind.utils.multiaddr import Multiaddr

    last = "no initial peer to ask"
    for maddr in initial_peers:
        if "/p2p/" not in maddr:
            continue
        address, peer = maddr.rsplit("/p2p/", 1)
        try:
            peer_id = PeerID.from_base58(peer)
            await asyncio.wait_for(probe._client.connect(peer_id, [Multiaddr(address)]), DIAL_TIMEOUT_S)
            _, reader, writer = await probe.call_binary_stream_handler(peer_id, PROTOCOL)
            request: dict[str, Any] = {"ports": ports, **({"via": via} if via else {})}
            asked = time.monotonic()
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), CHECK_TIMEOUT_S) or b"{}")
            writer.close()
        except Exception as exc:
            last = f"{maddr}: {type(exc).__name__}: {exc}"
            continue
        reachable = reply.get("reachable")
        return Reachability(
            reachable if isinstance(reachable, bool) else None, observed=str(reply.get("observed", "")),
            address=str(reply.get("address", "")), reason=str(reply.get("reason", ""))[:300],
        ), maddr, asked
    return Reachability(None, reason=last[:300]), None, time.monotonic()


async def _mapped_ports(probe: Any, *, deadline: float, poll_s: float = 0.25) -> list[int]:
    """The outside ports the probe's router mapped to it (UPnP IGD or NAT-PMP, found by its libp2p
    daemon): the TCP ports of its own addresses on an IP that is not this machine's. Waits until
    ``deadline`` (monotonic) for one; [] when none came."""
    while True:
        with contextlib.suppress(Exception):
            _, addrs = await probe._client.identify()
            mapped = sorted({int(parts[parts.index("tcp") + 1]) for parts in (str(a).split("/") for a in addrs)
                             if "tcp" in parts and "ip4" in parts and not is_local_address(parts[parts.index("ip4") + 1])})
            if mapped:
                return mapped[:MAX_PORTS]
        if time.monotonic() >= deadline:
            return []
        await asyncio.sleep(poll_s)


def is_local_address(host: str) -> bool:
    """Whether ``host`` is one of this machine's own addresses (a public IP, not a NAT's)."""
    import psutil

    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        return False
    for addresses in psutil.net_if_addrs().values():
        for item in addresses:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(item.address.split("%", 1)[0]) == wanted:
                    return True
    return False
