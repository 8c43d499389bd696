"""An honest volunteer's trainer that gets ready, then waits for a file before it joins the swarm:

    ESSAIM_TEST_JOIN_WHEN=FILE python waiting_trainer.py --assignment ... (the trainer's own options)

A trainer spends most of its start importing torch, transformers and hivemind, fetching the job's
files and building the model (a minute and more on a busy 2-core machine). This one does all of
that, then holds before it starts its DHT peer until FILE exists: a test decides to the second when
the volunteer joins (after the swarm averaged once, while a hostile peer offers a forged state).
``hostile_trainer.py`` holds the same way when given the variable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def join_when(path: str) -> None:
    """Make the trainer wait for ``path`` to exist before it starts its DHT peer."""
    from essaim.swarm import dht

    start_dht = dht.start_dht

    def held(*args: Any, **kwargs: Any) -> Any:
        while not os.path.exists(path):
            time.sleep(0.1)
        return start_dht(*args, **kwargs)

    dht.start_dht = held  # the trainer imports it when it joins


def main() -> int:
    from essaim.client.trainer import main as trainer_main

    join_when(os.environ["ESSAIM_TEST_JOIN_WHEN"])
    return trainer_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
