"""Store fixtures for the coordinator's tests.

``store`` (and ``store_url``) run a test once per backend: a SQLite file in the test's tmp dir, and
PostgreSQL at ``ESSAIM_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
in a schema made for this test session and emptied before each test; the PostgreSQL runs are skipped,
with the reason shown by ``pytest -rs``, when no server answers. ``sqlite_store`` is the SQLite one alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from essaim.coordinator.store import Store, open_store, sqlite_url

POSTGRES_URL = os.environ.get("ESSAIM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_engine(url: sa.URL) -> sa.Engine:
    return sa.create_engine(url, connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A store URL for a fresh PostgreSQL schema, dropped at the end of the session."""
    url = sa.make_url(POSTGRES_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        pytest.skip(
            f"no PostgreSQL server answers at {url.render_as_string(hide_password=True)} "
            f"({type(exc).__name__}); set ESSAIM_TEST_POSTGRES_URL to test that backend"
        )
    schema = f"essaim_test_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        engine.dispose()


def _empty_postgres_schema(url: str) -> None:
    engine = _admin_engine(sa.make_url(url))
    try:
        with engine.begin() as conn:
            names = (
                conn.execute(
                    sa.text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                        "AND tablename <> 'alembic_version'"
                    )
                )
                .scalars()
                .all()
            )
            if names:
                conn.exec_driver_sql(
                    "TRUNCATE " + ", ".join(f'"{name}"' for name in names) + " RESTART IDENTITY"
                )
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store on each backend (open it with ``open_store``)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "essaim.db")
    url: str = request.getfixturevalue("postgres_url")
    _empty_postgres_schema(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, empty store, once per backend; closed after the test."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """An open, empty store in a SQLite file (for tests that need not run on every backend)."""
    opened = open_store(sqlite_url(tmp_path / "essaim.db"))
    try:
        yield opened
    finally:
        opened.close()
