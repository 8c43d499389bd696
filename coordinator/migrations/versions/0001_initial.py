"""The first schema: volunteers, tokens, jobs, progress, ledger, blobs, settings.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (do not import the live tables).
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "volunteers",
        sa.Column("id", sa.String(64), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_volunteers"),
        sa.UniqueConstraint("public_key", name="uq_volunteers_public_key"),
    )
    op.create_index("ix_volunteers_status_last_seen", "volunteers", ["status", "last_seen"])

    op.create_table(
        "tokens",
        sa.Column("id", BigInt, nullable=False, autoincrement=True),
        sa.Column("token_hash", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
    )
    op.create_index("ix_tokens_subject", "tokens", ["subject"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])

    op.create_table(
        "progress",
        sa.Column("id", BigInt, nullable=False, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("samples_per_second", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("eval_metric", sa.Float(), nullable=False),
        sa.Column("live_peers", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_progress"),
    )
    op.create_index("ix_progress_job_id_at", "progress", ["job_id", "at"])

    op.create_table(
        "ledger",
        sa.Column("seq", BigInt, nullable=False, autoincrement=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("volunteer_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("compute_us", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger"),
    )
    op.create_index("ix_ledger_job_id_seq", "ledger", ["job_id", "seq"])
    op.create_index("ix_ledger_volunteer_id", "ledger", ["volunteer_id"])

    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_blobs"),
    )

    op.create_table(
        "settings",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_settings"),
    )


def downgrade() -> None:
    for table in ("settings", "blobs", "ledger", "progress", "jobs", "tokens", "volunteers"):
        op.drop_table(table)
