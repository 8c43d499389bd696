"""Try to join a job's DHT with a given token, as a peer of the swarm would; run as its own process.

    python tests/integration/swarm/join_probe.py --peer MADDR --job-id J --key K.pem --trust C.pem [--token T]

``--as-job`` is the job the token was issued for (default: the DHT's). ``--trust`` names the key whose public half the peer believes is the coordinator's; without
``--token`` the peer joins with no authorizer at all. Prints one JSON line: ``{"joined": false,
"error": "..."}``, or ``{"joined": true, "published": bool}`` after publishing a progress record.
"""

from __future__ import annotations

import argparse
import json
import sys

from essaim.swarm.auth import SwarmAuthorizer
from essaim.swarm.dht import shutdown_dht, start_dht
from essaim.swarm.errors import SwarmError
from essaim.swarm.identity import load_or_create_private_key, public_key_bytes
from essaim.swarm.records import ProgressRecord, progress_validators, publish_progress


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--trust", required=True)
    parser.add_argument("--token")
    parser.add_argument("--as-job", help="the job the peer's token is for (default: --job-id)")
    args = parser.parse_args()
    key = load_or_create_private_key(args.key)
    trusted = public_key_bytes(load_or_create_private_key(args.trust))
    try:
        token_job = args.as_job or args.job_id
        authorizer = SwarmAuthorizer(key, args.token, trusted, token_job) if args.token else None
        dht = start_dht(initial_peers=[args.peer], identity_path=None, authorizer=authorizer, client_mode=False,
                        record_validators=progress_validators(args.job_id), private_key=key, startup_timeout=30)
    except SwarmError as exc:
        print(json.dumps({"joined": False, "error": str(exc)}), flush=True)
        return 0
    try:
        published = publish_progress(dht, args.job_id, ProgressRecord(epoch=1, samples=16, volunteer_id="probe"))
        print(json.dumps({"joined": True, "published": published}), flush=True)
    finally:
        shutdown_dht(dht)
    return 0


if __name__ == "__main__":
    sys.exit(main())
