"""A stranger that dials the coordinator's averaging peer directly, with no swarm token: it knows the
peer's public address (an averaging peer's address is handed to every volunteer) and the job id,
and asks for the job's state, to join an averaging group and to have parts reduced.

    python hostile_peer.py <averaging peer multiaddr> <job id> <grad averager class> <out.json>

It writes what it got: ``state_messages`` (state parts streamed to it), ``join_codes`` (the codes
the peer answered a join request with) and ``aggregate_codes`` (for a part sent to reduce).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import torch
from essaim.swarm import optimizer
from hivemind.p2p import P2P, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.asyncio import aiter_with_timeout, as_aiter
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.streaming import split_for_streaming

TIMEOUT_S = 60.0  # an answer, not a timeout, is what the test reads: the averaging peer may be slow on a loaded machine


async def _collect(stream: Any) -> list[Any]:
    out = []
    try:
        async for message in aiter_with_timeout(stream, TIMEOUT_S):
            out.append(message)
    except Exception as exc:  # refused streams may end in an error rather than an empty answer
        out.append(exc)
    return out


async def main(maddr: str, job_id: str, grad_class: str, out_path: str) -> None:
    p2p = await P2P.create(initial_peers=[maddr], host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    peer = PeerID.from_base58(maddr.rsplit("/p2p/", 1)[1])
    result: dict[str, Any] = {}
    try:
        state = optimizer._StateAverager.get_stub(p2p, peer, namespace=f"{job_id}_state_averager")
        got = await _collect(await state.rpc_download_state(averaging_pb2.DownloadRequest()))
        result["state_messages"] = sum(isinstance(m, averaging_pb2.DownloadData) for m in got)

        grads = getattr(optimizer, grad_class).get_stub(p2p, peer, namespace=f"{job_id}_grad_averager")
        request = averaging_pb2.JoinRequest(
            schema_hash=b"x" * 32, expiration=get_dht_time() + 10, client_mode=True,
            gather=MSGPackSerializer.dumps([None, 2, MSGPackSerializer.dumps(None)]),
            group_key=f"{job_id}_grad_averager.0b")
        got = await _collect(await grads.rpc_join_group(request))
        result["join_codes"] = [averaging_pb2.MessageCode.Name(m.code) for m in got
                                if isinstance(m, averaging_pb2.MessageFromLeader)]

        from hivemind.compression import serialize_torch_tensor

        part = serialize_torch_tensor(torch.full((1024,), 1e6))
        chunks = [averaging_pb2.AveragingData(code=averaging_pb2.PART_FOR_AVERAGING, group_id=b"g" * 20,
                                              tensor_part=chunk, weight=1e6) for chunk in split_for_streaming(part)]
        got = await _collect(await grads.rpc_aggregate_part(as_aiter(*chunks)))
        result["aggregate_codes"] = [averaging_pb2.MessageCode.Name(m.code) for m in got
                                     if isinstance(m, averaging_pb2.AveragingData)]
        result["aggregate_errors"] = [repr(m) for m in got if isinstance(m, Exception)]
    finally:
        with open(out_path, "w") as f:
            json.dump(result, f)
        await p2p.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
