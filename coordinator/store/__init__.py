"""essaim.coordinator.store: the coordinator's persistent state (SQLAlchemy 2, Alembic).

Open one with :func:`open_store` (``sqlite:////path/essaim.db`` or
``postgresql+psycopg://user:password@host/db``); the schema is migrated on open. The ledger's hash
chain is defined in :mod:`essaim.coordinator.store.ledger`.
"""

from __future__ import annotations

from essaim.coordinator.store.engine import sqlite_url
from essaim.coordinator.store.ledger import GENESIS_HASH, LedgerVerification, entry_hash, verify_chain
from essaim.coordinator.store.records import (
    Contribution,
    HeartbeatRecord,
    LedgerDraft,
    SwarmPeer,
    TokenRecord,
)
from essaim.coordinator.store.store import Store, open_store

__all__ = [
    "GENESIS_HASH",
    "Contribution",
    "HeartbeatRecord",
    "LedgerDraft",
    "LedgerVerification",
    "Store",
    "SwarmPeer",
    "TokenRecord",
    "entry_hash",
    "open_store",
    "sqlite_url",
    "verify_chain",
]
