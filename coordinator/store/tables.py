"""The coordinator's database schema, as SQLAlchemy Core tables.

The store (:mod:`essaim.coordinator.store`) queries these tables; the Alembic migrations in
:mod:`essaim.coordinator.migrations` create them, and a test checks that the two agree. Nothing
else should import this module: other components go through :class:`~essaim.coordinator.store.Store`.

Conventions: ids and hashes are bounded strings, free text (names, states, reasons) is ``Text``;
times are unix seconds in ``Float`` columns (double precision on PostgreSQL), except
in the ledger, whose hashed fields are integers (microseconds) so that a row re-hashes identically
on every backend; enums are stored as their string values; JSON columns hold plain dicts/lists.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A 64-bit integer that is SQLite's rowid alias when it is a primary key.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# JSON where Python ``None`` means SQL NULL.
Json = sa.JSON(none_as_null=True)

ID = 64  # uuid4 hex ids are 32 characters; leave room for other schemes

volunteers = sa.Table(
    "volunteers",
    metadata,
    sa.Column("id", sa.String(ID), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False, server_default=""),
    sa.Column("team", sa.Text(), nullable=False, server_default=""),
    sa.Column("public_key", sa.LargeBinary(), nullable=True),
    sa.Column("peer_id", sa.Text(), nullable=False, server_default=""),
    sa.Column("hardware", Json, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("state", sa.Text(), nullable=False, server_default=""),
    sa.Column("reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("last_seen", sa.Float(), nullable=False, server_default="0"),
    sa.Column("registered_at", sa.Float(), nullable=False),
    sa.Column("client_version", sa.Text(), nullable=False, server_default=""),
    sa.Column("current_job_id", sa.Text(), nullable=False, server_default=""),
    sa.Column("samples_per_second", sa.Float(), nullable=False, server_default="0"),
    sa.UniqueConstraint("public_key"),
    sa.Index(None, "status", "last_seen"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("label", sa.Text(), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=True),
    sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("token_hash"),
    sa.Index(None, "subject"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(ID), primary_key=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("owner", sa.Text(), nullable=False, server_default=""),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("status_reason", sa.Text(), nullable=False, server_default=""),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("recipe_yaml", sa.Text(), nullable=False),
    sa.Column("files", Json, nullable=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Column("metrics", Json, nullable=True),
    sa.Column("has_artifact", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Index(None, "status", "created_at"),
)

progress = sa.Table(
    "progress",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(ID), nullable=False),
    sa.Column("at", sa.Float(), nullable=False),
    sa.Column("epoch", sa.Integer(), nullable=False),
    sa.Column("samples", sa.BigInteger(), nullable=False),
    sa.Column("samples_per_second", sa.Float(), nullable=False),
    sa.Column("loss", sa.Float(), nullable=False),
    sa.Column("eval_metric", sa.Float(), nullable=False),
    sa.Column("live_peers", sa.Integer(), nullable=False),
    sa.Index(None, "job_id", "at"),
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("seq", BigInt, primary_key=True, autoincrement=False),
    sa.Column("job_id", sa.String(ID), nullable=False),
    sa.Column("volunteer_id", sa.String(ID), nullable=False),
    sa.Column("epoch", sa.Integer(), nullable=False),
    sa.Column("samples", sa.BigInteger(), nullable=False),
    sa.Column("compute_us", sa.BigInteger(), nullable=False),
    sa.Column("note", sa.Text(), nullable=False, server_default=""),
    sa.Column("created_at_us", sa.BigInteger(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # what was claimed, before caps and refusals (NULL on rows written before 0006)
    sa.Column("claimed_samples", sa.BigInteger(), nullable=True),
    sa.Column("claimed_compute_us", sa.BigInteger(), nullable=True),
    sa.Index(None, "job_id", "seq"),
    sa.Index(None, "volunteer_id"),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("uploaded_by", sa.String(200), nullable=True, index=True),  # a token's subject; NULL before 0003
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)

# How each volunteer takes part in a job's swarm, as the job's runner last saw it
# (:mod:`essaim.coordinator.swarm_view`): its reachability, the IP the coordinator's peer saw
# (private: admins only), and whether the job's last averaging round included it.
swarm_peers = sa.Table(
    "swarm_peers",
    metadata,
    sa.Column("job_id", sa.String(ID), primary_key=True),
    sa.Column("volunteer_id", sa.String(ID), primary_key=True),
    sa.Column("reachability", sa.String(16), nullable=False, server_default="unknown"),
    sa.Column("observed", sa.Text(), nullable=False, server_default=""),
    sa.Column("last_round_epoch", sa.Integer(), nullable=True),
    sa.Column("averaged_in_last_round", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Index(None, "volunteer_id"),
)

# Signed messages accepted once (a volunteer's registration, by its digest), kept until the
# signature's timestamp leaves the window in which it would be accepted (:mod:`essaim.coordinator.signup`).
used_signatures = sa.Table(
    "used_signatures",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float(), nullable=False, index=True),
)

# The shard slots handed to each volunteer for each job (the last assignment): the data the job's
# averaging peer checks a volunteer's updates on (:mod:`essaim.swarm.validation`).
assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("job_id", sa.String(ID), primary_key=True),
    sa.Column("volunteer_id", sa.String(ID), primary_key=True),
    sa.Column("slots", sa.Text(), nullable=False),  # a JSON list of ints
    sa.Column("assigned_at", sa.Float(), nullable=False),
)

ALL_TABLES = (volunteers, tokens, jobs, progress, ledger, blobs, settings, swarm_peers, used_signatures, assignments)
