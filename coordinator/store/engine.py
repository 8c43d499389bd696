"""Engines and migrations for the coordinator's store: SQLite files and PostgreSQL.

:func:`make_engine` turns a database URL into a SQLAlchemy engine set up for the coordinator
(SQLite: WAL journal, ``synchronous=FULL`` so an acknowledged commit survives the process being
killed, a busy timeout, and explicit ``BEGIN`` / ``BEGIN IMMEDIATE``; PostgreSQL through psycopg 3
with connect timeouts). :func:`run_migrations` upgrades a database to the newest schema with the
Alembic scripts shipped in :mod:`essaim.coordinator.migrations` (no ``alembic.ini`` needed).
Used by :class:`essaim.coordinator.store.Store`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from essaim.protocol.errors import InvalidArgument

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another one. "database is locked" errors mean it was too short."""

POSTGRES_CONNECT_TIMEOUT_S = 10

BEGIN_MODE = "essaim_sqlite_begin"
"""Execution option naming the SQLite ``BEGIN`` flavour of a connection's next transaction."""

MIGRATION_LOCK_KEY = 0x6573_7361_696D_0001  # "essaim" + 1: PostgreSQL advisory lock for migrations
LEDGER_LOCK_KEY = 0x6573_7361_696D_0002  # serializes ledger appends across processes

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def sqlite_url(path: Path | str) -> str:
    """The store URL of a SQLite file (made absolute)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def normalize_url(url: str) -> sa.URL:
    """Parse and check a store URL; ``postgresql://`` and ``postgres://`` get the psycopg driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InvalidArgument(
            f"database URL {url!r} is not valid ({exc}); use sqlite:////absolute/path/essaim.db "
            "or postgresql+psycopg://user:password@host:5432/dbname"
        ) from None
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; essaim uses psycopg 3
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in database:
            raise InvalidArgument(
                "an in-memory SQLite database cannot hold the coordinator's store; "
                "give a file, e.g. sqlite:////var/lib/essaim/essaim.db"
            )
    elif backend != "postgresql":
        raise InvalidArgument(
            f"database {backend!r} is not supported; use SQLite (sqlite:////path/essaim.db) "
            "or PostgreSQL (postgresql+psycopg://user:password@host:5432/dbname)"
        )
    return parsed


def safe_url(url: sa.URL) -> str:
    """The URL with its password hidden, for logs and messages."""
    return url.render_as_string(hide_password=True)


def make_engine(url: sa.URL) -> sa.Engine:
    """An engine for a URL checked by :func:`normalize_url`."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "essaim-coordinator"
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=8, max_overflow=16)


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=8,
        max_overflow=16,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: SQLAlchemy's "begin" event below
        # emits BEGIN itself, so reads get a stable snapshot and writers can ask for IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def alembic_config() -> Config:
    """An Alembic configuration pointing at the shipped migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def run_migrations(conn: sa.Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``conn`` (inside its open write transaction) to ``revision``.

    On PostgreSQL an advisory lock makes coordinators starting together migrate one at a time;
    on SQLite the caller's ``BEGIN IMMEDIATE`` does the same.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def current_revision(conn: sa.Connection) -> str | None:
    """The schema revision a database is at (None when it has never been migrated)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()
