"""Who uploaded each file: the blobs.uploaded_by column, for per-researcher upload quotas.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:  # SQLite rebuilds the table; PostgreSQL alters it
        batch.add_column(sa.Column("uploaded_by", sa.String(200), nullable=True))
    op.create_index("ix_blobs_uploaded_by", "blobs", ["uploaded_by"])


def downgrade() -> None:
    op.drop_index("ix_blobs_uploaded_by", table_name="blobs")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("uploaded_by")
