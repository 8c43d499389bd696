"""A job's DHT bootstrap peer for the swarm integration tests, run as its own process.

    python tests/integration/swarm/bootstrap_peer.py --job-id J --key K.pem --coordinator-key C.pem

Prints one JSON line ``{"maddrs": [...], "peer_id": ...}`` once it listens, then answers commands
on stdin, one per line: ``records`` prints ``{"records": {peer_id: record}}`` (the signed progress
records it can read). It exits on ``quit``, at the end of stdin, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from essaim.swarm.auth import SwarmAuthorizer, issue_swarm_token
from essaim.swarm.dht import shutdown_dht, start_dht, visible_maddrs
from essaim.swarm.errors import DHTError
from essaim.swarm.identity import ensure_p2p_identity, load_or_create_private_key, public_key_bytes
from essaim.swarm.records import progress_validators, read_progress


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--coordinator-key", required=True)
    args = parser.parse_args()
    out = sys.stdout
    coordinator = load_or_create_private_key(args.coordinator_key)
    key = load_or_create_private_key(args.key)
    identity = ensure_p2p_identity(key, args.key + ".p2p")

    def fresh_token() -> str:
        return issue_swarm_token(coordinator, job_id=args.job_id, volunteer_id="bootstrap",
                                 peer_public_key=public_key_bytes(key), ttl_s=3600)[0]

    authorizer = SwarmAuthorizer(key, fresh_token(), public_key_bytes(coordinator), args.job_id, refresh=fresh_token)
    dht = start_dht(initial_peers=[], identity_path=identity, authorizer=authorizer,
                    record_validators=progress_validators(args.job_id), client_mode=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        out.write(json.dumps({"maddrs": visible_maddrs(dht), "peer_id": str(dht.peer_id)}) + "\n")
        out.flush()
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            if command == "records":
                try:
                    records = {k: v.model_dump() for k, v in read_progress(dht, args.job_id).items()}
                except DHTError as exc:
                    records = {"error": str(exc)}
                out.write(json.dumps({"records": records}) + "\n")
                out.flush()
    finally:
        shutdown_dht(dht)
    return 0


if __name__ == "__main__":
    sys.exit(main())
