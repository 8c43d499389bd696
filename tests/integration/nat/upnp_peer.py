"""A process of the UPnP test (``test_upnp.py``), run inside a lab namespace. One role per run:

    python upnp_peer.py coordinator RECORD [SECOND]   # a full DHT peer serving reachability checks (with
                                             # SECOND, its host's second address); prints its maddrs
    python upnp_peer.py check MADDR...       # essaim's reachability check against those initial peers; prints it
    python upnp_peer.py listen               # a full peer's DHT (essaim's start_dht), whose daemon maps a port;
                                             # prints its peer id and addresses once the router mapped one
    python upnp_peer.py dial PEER MADDR...   # connects to PEER at those addresses; prints whether it could

Each prints one JSON line on stdout; the long-lived ones (coordinator, listen) then wait for stdin to close.
"""

from __future__ import annotations

import asyncio
import json
import sys


def _wait_for_stdin_close() -> None:
    sys.stdin.read()


def coordinator(record: str, second_address: str | None = None) -> None:
    import hivemind
    from essaim.swarm.reachability import serve_reachability_checks

    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/0.0.0.0/tcp/0"], client_mode=False)
    try:
        serve_reachability_checks(dht, listen_host="0.0.0.0", record=record, second_address=second_address)
        maddrs = [str(m) for m in dht.get_visible_maddrs()
                  if "/127.0.0.1/" not in str(m) and (not second_address or f"/{second_address}/" not in str(m))]
        print(json.dumps({"maddrs": maddrs}), flush=True)
        _wait_for_stdin_close()
    finally:
        dht.shutdown()


def check(initial_peers: list[str]) -> None:
    from essaim.swarm.reachability import check_reachability, pin_ports

    host_maddrs = pin_ports(["/ip4/0.0.0.0/tcp/0"])
    seen = check_reachability(initial_peers, host_maddrs=host_maddrs)
    print(json.dumps({**seen.as_dict(), "reachable": seen.reachable, "via": seen.via, "host_maddrs": host_maddrs}),
          flush=True)


def listen() -> None:
    """A full peer's DHT as a trainer starts it (essaim.swarm.dht.start_dht, whose libp2p daemon
    maps a port on the router), until its visible addresses hold one on the router's outside IP."""
    import time

    from essaim.swarm.dht import shutdown_dht, start_dht
    from essaim.swarm.reachability import is_local_address

    dht = start_dht(initial_peers=[], identity_path=None, authorizer=None, host_maddrs=["/ip4/0.0.0.0/tcp/0"],
                    client_mode=False)
    try:
        mapped: list[str] = []
        for _ in range(120):  # the daemon finds the router and maps a port: about 5 s
            addrs = [str(a) for a in dht.get_visible_maddrs(latest=True)]
            mapped = [a for a in addrs if not is_local_address(a.split("/")[2])]
            if mapped:
                break
            time.sleep(0.25)
        lan = [a for a in addrs if a.split("/")[2] not in ("127.0.0.1", *(m.split("/")[2] for m in mapped))]
        print(json.dumps({"peer_id": dht.peer_id.to_base58(), "mapped": [m.split("/p2p/")[0] for m in mapped],
                          "lan": [m.split("/p2p/")[0] for m in lan]}), flush=True)
        _wait_for_stdin_close()
    finally:
        shutdown_dht(dht)


async def _dial(peer: str, maddrs: list[str]) -> None:
    from hivemind.p2p import P2P, PeerID
    from hivemind.utils.multiaddr import Multiaddr

    p2p = await P2P.create(host_maddrs=["/ip4/0.0.0.0/tcp/0"], nat_port_map=False)
    try:
        await asyncio.wait_for(p2p._client.connect(PeerID.from_base58(peer), [Multiaddr(m) for m in maddrs]), 10)
        peers = await p2p._client.list_peers()
        via = [str(a) for p in peers if p.peer_id.to_base58() == peer for a in p.addrs]
        print(json.dumps({"connected": True, "via": via}), flush=True)
    except Exception as exc:
        print(json.dumps({"connected": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    finally:
        await p2p.shutdown()


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "coordinator":
        coordinator(*args[:2])
    elif role == "check":
        check(args)
    elif role == "listen":
        listen()
    elif role == "dial":
        asyncio.run(_dial(args[0], args[1:]))
    else:
        raise SystemExit(f"unknown role {role!r}")
