"""Alembic environment of the coordinator's store.

The store runs migrations with an open connection in ``config.attributes["connection"]`` (see
:func:`essaim.coordinator.store.engine.run_migrations`). Without one, as under the ``alembic``
command, it connects to ``sqlalchemy.url`` from the configuration, or emits SQL in offline mode.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context
from essaim.coordinator.store.tables import metadata

config = context.config


def _configure(**kwargs: Any) -> None:
    context.configure(target_metadata=metadata, compare_type=True, **kwargs)


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: sa.Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_online(given)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            run_online(connection)
    finally:
        engine.dispose()
