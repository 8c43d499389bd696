"""What every part of the store shares: the engine, transactions and error translation.

:class:`StoreBase` is the base of the repository mixins (tokens, volunteers, jobs, ledger) that
:class:`essaim.coordinator.store.Store` combines. Reads run in a plain transaction; writes in
``BEGIN IMMEDIATE`` on SQLite, so that two writers queue on the busy timeout instead of failing
when one upgrades a read lock. Database errors that mean "cannot reach or use the database now"
become :class:`essaim.protocol.errors.Unavailable` (a broken constraint AlreadyExists, a value
that does not fit InvalidArgument), so callers never see SQLAlchemy's errors.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from essaim.coordinator.store import engine as engines
from essaim.protocol.errors import AlreadyExists, InvalidArgument, Unavailable
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def now() -> float:
    return time.time()


def new_id() -> str:
    """A new random id (uuid4, 32 hex characters)."""
    return uuid.uuid4().hex


def check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise InvalidArgument(f"{sha256!r} is not a sha256 digest: expected 64 lowercase hex characters")
    return sha256


class StoreBase:
    """Holds the engine; subclasses add the queries."""

    url: str
    dialect: str

    def __init__(self, url: str) -> None:
        parsed = engines.normalize_url(url)
        self.url = parsed.render_as_string(hide_password=False)
        self._safe_url = engines.safe_url(parsed)
        self._engine = engines.make_engine(parsed)
        self.dialect = self._engine.dialect.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url!r})"

    def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it already is)."""
        with self._write() as conn:
            before = engines.current_revision(conn)
            engines.run_migrations(conn)
            after = engines.current_revision(conn)
        if before != after:
            log.info("migrated the store at %s from %s to %s", self._safe_url, before, after)

    def close(self) -> None:
        """Close every pooled connection. The store must not be used afterwards."""
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._translate(), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._translate(), self._engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.execution_options(**{engines.BEGIN_MODE: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists(f"this conflicts with a row already stored: {exc.orig or exc}") from exc
        except sa.exc.DataError as exc:
            raise InvalidArgument(
                f"a value does not fit the coordinator's database: {exc.orig or exc}"
            ) from exc
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            log.warning("store %s failed: %s", self._safe_url, exc.orig or exc)
            raise Unavailable(
                f"the coordinator's database ({self._safe_url}) cannot be used right now: "
                f"{exc.orig or exc}. Check that it is reachable and not locked, then retry."
            ) from exc

    def _insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT that supports ON CONFLICT on this backend and reports how many rows it wrote."""
        insert = postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)
        return insert.execution_options(preserve_rowcount=True)
