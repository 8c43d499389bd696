"""A job's coordinator peer answering reachability checks, for the tests, run as its own process.

    python tests/integration/swarm/reachability_peer.py --record FILE

Prints one JSON line ``{"maddrs": [...]}`` once it listens on 127.0.0.1, then serves
:func:`essaim.swarm.reachability.serve_reachability_checks` (answers kept in FILE) until stdin
closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from essaim.swarm.dht import shutdown_dht, start_dht, visible_maddrs
from essaim.swarm.reachability import serve_reachability_checks


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    dht = start_dht(initial_peers=[], identity_path=None, authorizer=None, client_mode=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve_reachability_checks(dht, listen_host="127.0.0.1", record=args.record)
        sys.stdout.write(json.dumps({"maddrs": visible_maddrs(dht)}) + "\n")
        sys.stdout.flush()
        for _ in sys.stdin:
            pass
    finally:
        shutdown_dht(dht)
    return 0


if __name__ == "__main__":
    sys.exit(main())
