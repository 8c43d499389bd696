"""The coordinator's store: one object over a SQLite file or a PostgreSQL database.

:func:`open_store` is what the coordinator calls at start (it migrates the schema to the newest
revision); :class:`Store` combines the repositories for tokens and settings, volunteers, jobs,
the ledger and the volunteers' part in each job's swarm. Every method is synchronous, thread-safe, and takes and returns plain dataclasses
(:mod:`essaim.protocol.types`, :mod:`essaim.coordinator.store.records`), never ORM objects.
"""

from __future__ import annotations

import logging

from essaim.coordinator.store.jobs import JobsMixin
from essaim.coordinator.store.ledger_rows import LedgerMixin
from essaim.coordinator.store.swarm_peers import SwarmPeersMixin
from essaim.coordinator.store.tokens import TokensMixin
from essaim.coordinator.store.volunteers import VolunteersMixin

log = logging.getLogger(__name__)


class Store(TokensMixin, VolunteersMixin, JobsMixin, LedgerMixin, SwarmPeersMixin):
    """The coordinator's persistent state. Build it with :func:`open_store`.

    ``url`` is the database URL as used (``postgresql://`` becomes ``postgresql+psycopg://``);
    ``dialect`` is ``"sqlite"`` or ``"postgresql"``.
    """


def open_store(url: str) -> Store:
    """Connect to the database at ``url``, migrate it to the newest schema, and return the store.

    Raises InvalidArgument for an unsupported URL and Unavailable when the database cannot be
    reached or is locked.
    """
    store = Store(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    log.debug("opened %r", store)
    return store
