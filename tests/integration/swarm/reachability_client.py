"""A volunteer's side of a reachability check, honest or hostile, run as its own process.

    python tests/integration/swarm/reachability_client.py --peer MADDR --mode MODE

Modes: ``honest`` (:func:`essaim.swarm.reachability.check_reachability`), ``closed-port`` (names
a port it does not listen on), ``many-ports`` (names 1,000 ports), ``oversized`` (a 200 kB request
with no end of line), ``garbage`` (not JSON), ``twice`` (two checks from the same peer at once).
Prints one JSON line: the replies it got, and the seconds each took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from essaim.swarm.reachability import PROTOCOL, check_reachability, pin_ports


async def _raw(peer: str, payloads: list[bytes], listen: list[str]) -> list[dict[str, Any]]:
    from hivemind.p2p import P2P, PeerID
    from hivemind.utils.multiaddr import Multiaddr

    address, peer_id_text = peer.rsplit("/p2p/", 1)
    peer_id = PeerID.from_base58(peer_id_text)
    p2p = await P2P.create(host_maddrs=listen)
    replies = []
    try:
        await p2p._client.connect(peer_id, [Multiaddr(address)])
        for payload in payloads:
            started = time.monotonic()
            _, reader, writer = await p2p.call_binary_stream_handler(peer_id, PROTOCOL)
            writer.write(payload)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 60)
            writer.close()
            reply = json.loads(line or b"{}")
            reply["seconds"] = round(time.monotonic() - started, 2)
            replies.append(reply)
    finally:
        await p2p.shutdown()
    return replies


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--mode", required=True)
    args = parser.parse_args()
    listen = pin_ports(["/ip4/127.0.0.1/tcp/0"])
    port = int(listen[0].rsplit("/", 1)[1])
    if args.mode == "honest":
        seen = check_reachability([args.peer], host_maddrs=listen)
        replies: list[dict[str, Any]] = [{"reachable": seen.reachable, "observed": seen.observed,
                                          "address": seen.address, "reason": seen.reason}]
    else:
        payloads = {
            "closed-port": [json.dumps({"ports": [port + 1 if port < 65535 else port - 1]}).encode() + b"\n"],
            "many-ports": [json.dumps({"ports": list(range(20000, 20300))}).encode() + b"\n"],
            "oversized": [b"x" * 200_000],
            "garbage": [b"{not json\n"],
            "twice": [json.dumps({"ports": [port]}).encode() + b"\n"] * 2,
        }[args.mode]
        replies = asyncio.run(_raw(args.peer, payloads, listen))
    sys.stdout.write(json.dumps({"replies": replies}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
